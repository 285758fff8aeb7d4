#!/usr/bin/env bash
# P-tuning v2 DPR on SQuAD v1.1 on a CPU: train on the 44-article train subset (BM25 hard negatives
# without the answer), retrieve among the 2,067 dev paragraphs, report top-k answer accuracy.
# MODEL=bert-tiny (default) or MODEL=minilm-l6. Extra flags go to train_dense_encoder.py.
set -euo pipefail
# shellcheck source=cpu_ptv2_common.sh
source "$(dirname "$0")/cpu_ptv2_common.sh"
MODEL=${MODEL:-bert-tiny}
DATA=${DATA:-../shared/data/squad1.1}
OUT=${OUT:-runs/squad-$MODEL-ptv2}

python prepare_data.py squad --squad_file "$DATA/train-subset-v1.1.json" --eval_file "$DATA/dev-v1.1.json" \
	--out_dir data/squad --name squad --dev_ratio 0.1 --hard_negatives 30 --other_negatives 30 --seed 0

train_ptv2 squad \
	--num_train_epochs 2 \
	--eval_per_epoch 2 \
	--val_av_rank_max_qs 500 \
	--log_batch_step 50 "$@"

embed_ptv2 squad
python dense_retriever.py --model_file "$OUT" --encoded_ctx_file "$OUT/embeddings/squad_*" \
	--qa_file data/squad/squad-test-qa.tsv --ctx_file data/squad/squad-passages.tsv --n-docs 100 \
	--out_file "$OUT/squad-dev-results.json"
