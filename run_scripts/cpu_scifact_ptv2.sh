#!/usr/bin/env bash
# P-tuning v2 DPR on SciFact, on a CPU in minutes: prepare (BM25 hard negatives, dev held out from
# train) -> train a prefix -> embed the corpus -> evaluate on SciFact test (nDCG@10, R@100, ECE).
# MODEL=bert-tiny (default, ~5 min on 2 cores) or MODEL=minilm-l6 (slower, much better).
# Extra flags go to train_dense_encoder.py (e.g. --num_train_epochs 3).
set -euo pipefail
MODEL=${MODEL:-bert-tiny}
DATA=${DATA:-../shared/data/scifact}
OUT=${OUT:-runs/scifact-$MODEL-ptv2}

python prepare_data.py beir --beir_dir "$DATA" --out_dir data/scifact --train_split train --eval_split test \
	--dev_ratio 0.1 --hard_negatives 30 --other_negatives 30 --seed 0

python train_dense_encoder.py \
	--pretrained_model_cfg "$MODEL" \
	--prefix --pre_seq_len 32 \
	--train_file data/scifact/scifact-train.json \
	--dev_file data/scifact/scifact-dev.json \
	--output_dir "$OUT" \
	--seed 12345 \
	--sequence_length 256 \
	--batch_size 32 \
	--dev_batch_size 32 \
	--learning_rate 1e-2 \
	--warmup_percentage 0.05 \
	--max_grad_norm 2.0 \
	--hard_negatives 1 \
	--num_train_epochs 8 \
	--eval_per_epoch 1 \
	--val_av_rank_start_epoch 0 \
	--val_av_rank_hard_neg 30 \
	--val_av_rank_other_neg 30 \
	--log_batch_step 10 "$@"

# --model_file with a training output folder means its best checkpoint (best_checkpoint.json).
python generate_embeddings.py --model_file "$OUT" --ctx_file data/scifact/scifact-passages.tsv \
	--out_file "$OUT/embeddings/scifact" --batch_size 64
python dense_retriever.py --model_file "$OUT" --encoded_ctx_file "$OUT/embeddings/scifact_*" \
	--beir_dir "$DATA" --split test --n-docs 100 --out_file "$OUT/scifact-test.trec" \
	--metrics_file "$OUT/scifact-test-metrics.json"
