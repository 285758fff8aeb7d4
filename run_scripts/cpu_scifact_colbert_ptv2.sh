#!/usr/bin/env bash
# Prefix-tuned ColBERT on BEIR SciFact, on CPU: prepare the data (BM25 hard negatives; stages
# already done are skipped), train on SciFact train, index the corpus, evaluate on SciFact test
# (MRR@10, R@50/200/1000, nDCG@10). Small by default (bert-tiny, 20 steps, a few minutes);
# e.g. MODEL=minilm-l6 PRE_SEQ_LEN=64 MAXSTEPS=2000 for a real run. Rerunning continues the
# training in $OUT (--resume) and rebuilds the index.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
MODEL=${MODEL:-bert-tiny}
PRE_SEQ_LEN=${PRE_SEQ_LEN:-16}
MAXSTEPS=${MAXSTEPS:-20}
BSIZE=${BSIZE:-16}
LR=${LR:-1e-2}
DATA=data/scifact
OUT=${OUT:-runs/cpu_scifact_colbert_ptv2}

python prepare_data.py beir --beir_dir ../shared/data/scifact --out_dir $DATA --no_progress

python -m colbert.train \
	--pretrained_model_cfg "$MODEL" \
	--prefix --pre_seq_len "$PRE_SEQ_LEN" \
	--dpr_train_file $DATA/scifact-train.json --hard_negatives 1 \
	--query_maxlen 32 --doc_maxlen 180 --dim 128 --mask-punctuation \
	--bsize "$BSIZE" --lr "$LR" --maxsteps "$MAXSTEPS" --save_every "$MAXSTEPS" --log_every 10 \
	--output_dir "$OUT/train" --no_cuda --resume --no_progress

python -m colbert.index \
	--checkpoint "$OUT/train/colbert-$MAXSTEPS" \
	--collection $DATA/scifact-passages.tsv \
	--index_root "$OUT" --index_name scifact \
	--partitions 256 --sample 0.3 --no_cuda --no_progress

python -m colbert.retrieve \
	--index_root "$OUT" --index_name scifact \
	--queries $DATA/scifact-test-queries.jsonl --qrels $DATA/scifact-test-qrels.tsv \
	--nprobe 32 --faiss_depth 256 --depth 1000 \
	--output_dir "$OUT/test" --no_cuda --no_progress
