#!/usr/bin/env bash
# P-tuning v2 DPR on SciFact, on a CPU in minutes: prepare (BM25 hard negatives, dev held out from
# train) -> train a prefix -> embed the corpus -> evaluate on SciFact test (nDCG@10, R@100, ECE).
# MODEL=bert-tiny (default, ~5 min on 2 cores) or MODEL=minilm-l6 (slower, much better).
# Extra flags go to train_dense_encoder.py (e.g. --num_train_epochs 3).
set -euo pipefail
# shellcheck source=cpu_ptv2_common.sh
source "$(dirname "$0")/cpu_ptv2_common.sh"
MODEL=${MODEL:-bert-tiny}
DATA=${DATA:-../shared/data/scifact}
OUT=${OUT:-runs/scifact-$MODEL-ptv2}

python prepare_data.py beir --beir_dir "$DATA" --out_dir data/scifact --train_split train --eval_split test \
	--dev_ratio 0.1 --hard_negatives 30 --other_negatives 30 --seed 0

train_ptv2 scifact \
	--num_train_epochs 8 \
	--eval_per_epoch 1 \
	--val_av_rank_hard_neg 30 \
	--val_av_rank_other_neg 30 \
	--log_batch_step 10 "$@"

embed_ptv2 scifact
python dense_retriever.py --model_file "$OUT" --encoded_ctx_file "$OUT/embeddings/scifact_*" \
	--beir_dir "$DATA" --split test --n-docs 100 --out_file "$OUT/scifact-test.trec" \
	--metrics_file "$OUT/scifact-test-metrics.json"
