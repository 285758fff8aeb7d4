#!/usr/bin/env bash
# P-tuning v2 DPR on SQuAD v1.1 on a CPU: train on the 44-article train subset (BM25 hard negatives
# without the answer), retrieve among the 2,067 dev paragraphs, report top-k answer accuracy.
# MODEL=bert-tiny (default) or MODEL=minilm-l6. Extra flags go to train_dense_encoder.py.
set -euo pipefail
MODEL=${MODEL:-bert-tiny}
DATA=${DATA:-../shared/data/squad1.1}
OUT=${OUT:-runs/squad-$MODEL-ptv2}

python prepare_data.py squad --squad_file "$DATA/train-subset-v1.1.json" --eval_file "$DATA/dev-v1.1.json" \
	--out_dir data/squad --name squad --dev_ratio 0.1 --hard_negatives 30 --other_negatives 30 --seed 0

python train_dense_encoder.py \
	--pretrained_model_cfg "$MODEL" \
	--prefix --pre_seq_len 32 \
	--train_file data/squad/squad-train.json \
	--dev_file data/squad/squad-dev.json \
	--output_dir "$OUT" \
	--seed 12345 \
	--sequence_length 256 \
	--batch_size 32 \
	--dev_batch_size 32 \
	--learning_rate 1e-2 \
	--warmup_percentage 0.05 \
	--max_grad_norm 2.0 \
	--hard_negatives 1 \
	--num_train_epochs 2 \
	--eval_per_epoch 2 \
	--val_av_rank_start_epoch 0 \
	--val_av_rank_max_qs 500 \
	--log_batch_step 50 "$@"

# --model_file with a training output folder means its best checkpoint (best_checkpoint.json).
python generate_embeddings.py --model_file "$OUT" --ctx_file data/squad/squad-passages.tsv \
	--out_file "$OUT/embeddings/squad" --batch_size 64
python dense_retriever.py --model_file "$OUT" --encoded_ctx_file "$OUT/embeddings/squad_*" \
	--qa_file data/squad/squad-test-qa.tsv --ctx_file data/squad/squad-passages.tsv --n-docs 100 \
	--out_file "$OUT/squad-dev-results.json"
