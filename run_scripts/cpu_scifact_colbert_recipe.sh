#!/usr/bin/env bash
# The ColBERT recipe of issue 16 (minilm-l6, one 64-token prefix for queries and documents, BENCHMARKS.md
# section 8): negatives drawn afresh at every step from each question's 30 BM25 negatives, in-batch negatives,
# warmup then linear decay, the checkpoint with the best dev nDCG@10 (over the dev questions' positives and
# first 10 BM25 negatives) kept; then an exact (brute-force MaxSim) and a PLAID search of SciFact test.
#
#   SEED=12345 bash run_scripts/cpu_scifact_colbert_recipe.sh
#   STEPS=0 OUT=runs/colbert-recipe/untrained bash run_scripts/cpu_scifact_colbert_recipe.sh   # the untrained row
#
# Stages that are done are skipped (the prepared data is shared under $ROOT). Extra flags go to colbert.train.
set -euo pipefail
MODEL=${MODEL:-minilm-l6}
SEED=${SEED:-12345}
STEPS=${STEPS:-138} # 6 epochs of the 727 SciFact train questions at --bsize 32
DATA=${DATA:-../shared/data/scifact}
ROOT=${ROOT:-runs/colbert-recipe}
OUT=${OUT:-$ROOT/prefix-s$SEED}
PY=${PYTHON:-python}
prepared=$ROOT/data
passages=$prepared/scifact-passages.tsv
export HF_HUB_OFFLINE=1

# 1. SciFact with a dev split held out of train (30 BM25 negatives a question), as the DPR recipe.
if [ ! -f "$prepared/scifact-train.json" ]; then
	$PY prepare_data.py beir --beir_dir "$DATA" --out_dir "$prepared" --name scifact --train_split train \
		--eval_split test --dev_ratio 0.1 --seed 0 --no_progress
fi
# 2. Train (or, with STEPS=0, write the untrained model: PCA projection, random prefix).
validation=(--dev_file "$prepared/scifact-dev.json" --val_ctx_file "$passages" --val_pool 10 --val_every 23)
[ "$STEPS" -eq 0 ] && validation=()
[ -f "$OUT/train/colbert-$STEPS/config.json" ] || $PY -m colbert.train --pretrained_model_cfg "$MODEL" \
	--prefix --pre_seq_len 64 --lr 1e-2 --warmup 14 --lr_schedule linear \
	--dpr_train_file "$prepared/scifact-train.json" --hard_negatives 1 --negative_pool 30 --in_batch_negatives \
	--query_maxlen 32 --doc_maxlen 180 --dim 128 --mask-punctuation --bsize 32 --maxsteps "$STEPS" \
	"${validation[@]}" --output_dir "$OUT/train" --seed "$SEED" --log_every 10 --no_cuda --no_progress "$@"
# 3. Index the corpus with the best checkpoint (the run folder stands for it): PLAID centroids and codes.
[ -f "$OUT/scifact/meta.json" ] || $PY -m colbert.index --checkpoint "$OUT/train" --collection "$passages" \
	--index_root "$OUT" --index_name scifact --index_mode plaid --no_cuda --no_progress
# 4. SciFact test (300 queries): exact MaxSim over every document, then PLAID's defaults.
for search in exact plaid; do
	flags=()
	[ "$search" = exact ] && flags=(--brute_force)
	$PY -m colbert.retrieve --index_root "$OUT" --index_name scifact "${flags[@]}" \
		--queries "$prepared/scifact-test-queries.jsonl" --qrels "$prepared/scifact-test-qrels.tsv" --depth 100 \
		--output_dir "$OUT/test-$search" --no_cuda --no_progress
done
