#!/usr/bin/env bash
# The SciFact recipe of issue 15 (minilm-l6, BENCHMARKS.md section 11): dense hard negatives mined with the
# zero-shot index, checkpoints chosen by dev nDCG@10, dropout off. One seed per call:
#
#   MODE=prefix-both SEED=12345 bash run_scripts/cpu_scifact_recipe.sh      # 64-token prefix on both sides
#   MODE=prefix-question SEED=12345 bash run_scripts/cpu_scifact_recipe.sh  # question side; index untouched
#   MODE=finetune SEED=12345 bash run_scripts/cpu_scifact_recipe.sh         # full fine-tuning (baseline)
#
# Stages that are done are skipped (data, zero-shot index and mined negatives are shared by every MODE and
# SEED under $ROOT), so a sweep over seeds pays for them once. Extra flags go to train_dense_encoder.py.
# ROUNDS=2 adds an ANCE-style round: re-mine the negatives with the trained model's index, train again
# from the first round's best checkpoint.
set -euo pipefail
MODEL=${MODEL:-minilm-l6}
MODE=${MODE:-prefix-both}
SEED=${SEED:-12345}
ROUNDS=${ROUNDS:-1}
DATA=${DATA:-../shared/data/scifact}
ROOT=${ROOT:-runs/recipe-$MODEL}
OUT=${OUT:-$ROOT/$MODE-s$SEED}
PY=${PYTHON:-python}
prepared=$ROOT/data
passages=$prepared/scifact-passages.tsv

case $MODE in
prefix-both) mode_flags=(--prefix --pre_seq_len 64 --learning_rate 1e-2) epochs=8 negatives=1 ;;
prefix-question) # the passage side is frozen: training looks the zero-shot vectors up instead of encoding them
	mode_flags=(--prefix --pre_seq_len 32 --tune_side question --learning_rate 1e-2 --ctx_embeddings "$ROOT/zero-shot_*")
	epochs=10 negatives=7
	;;
finetune) mode_flags=(--learning_rate 2e-5) epochs=8 negatives=1 ;;
*)
	echo "MODE must be prefix-both, prefix-question or finetune, not '$MODE'" >&2
	exit 2
	;;
esac

# 1. SciFact with a dev split held out of train (BM25 negatives come with it; the recipe replaces them).
if [ ! -f "$prepared/scifact-train.json" ]; then
	$PY prepare_data.py beir --beir_dir "$DATA" --out_dir "$prepared" --name scifact --train_split train \
		--eval_split test --dev_ratio 0.1 --seed 0 --no_progress
fi
# 2. The zero-shot index: the corpus encoded by the frozen base model.
if [ ! -f "$ROOT/zero-shot_0/header.json" ] && ! ls "$ROOT"/zero-shot_0* >/dev/null 2>&1; then
	$PY generate_embeddings.py --pretrained_model_cfg "$MODEL" --sequence_length 256 --ctx_file "$passages" \
		--out_file "$ROOT/zero-shot" --batch_size 64 --no_progress
fi

# mine INDEX OUT_FILE MODEL_FLAG...: the 7 best-ranked passages in dense ranks 3-30 of INDEX as hard negatives
# of each train question (the three best-ranked non-positives, ranks 0-2, are skipped: on SciFact they are
# often unlabelled positives).
mine() {
	local index=$1 out=$2
	shift 2
	[ -f "$out" ] && return 0
	$PY prepare_data.py mine "$@" --sequence_length 256 --encoded_ctx_file "$index"'_*' --ctx_file "$passages" \
		--train_file "$prepared/scifact-train.json" --out_file "$out" --range_min 3 --range_max 30 \
		--num_negatives 7 --no_progress
}
mine "$ROOT/zero-shot" "$prepared/scifact-train-dense.json" --pretrained_model_cfg "$MODEL"

train_file=$prepared/scifact-train-dense.json
start=()
for round in $(seq 1 "$ROUNDS"); do
	run=$OUT
	[ "$round" -gt 1 ] && run=$OUT/round$round
	# 3. Train, keeping the checkpoint with the best nDCG@10 on the dev questions over the whole corpus.
	$PY train_dense_encoder.py --pretrained_model_cfg "$MODEL" "${mode_flags[@]}" "${start[@]}" \
		--train_file "$train_file" --dev_file "$prepared/scifact-dev.json" --output_dir "$run" --seed "$SEED" \
		--sequence_length 256 --batch_size 32 --dev_batch_size 64 --warmup_percentage 0.05 --max_grad_norm 2.0 \
		--hard_negatives "$negatives" --dropout 0 --prefix_dropout 0 --num_train_epochs "$epochs" \
		--eval_per_epoch 1 --val_metric ndcg@10 --val_ctx_file "$passages" --log_batch_step 10 "$@"
	# 4. The index to search: the zero-shot one when only the question side was trained.
	index=$ROOT/zero-shot
	if [ "$MODE" != prefix-question ]; then
		index=$run/embeddings/scifact
		ls "$index"_0* >/dev/null 2>&1 || $PY generate_embeddings.py --model_file "$run" --ctx_file "$passages" \
			--out_file "$index" --batch_size 64 --no_progress
	fi
	# 5. SciFact test (300 queries): nDCG@10, MRR@10, R@100 and a TREC run.
	$PY dense_retriever.py --model_file "$run" --encoded_ctx_file "$index"'_*' --beir_dir "$DATA" --split test \
		--n-docs 100 --out_file "$run/scifact-test.trec" --metrics_file "$run/scifact-test-metrics.json" \
		--no_progress
	if [ "$round" -lt "$ROUNDS" ]; then # ANCE: the next round's negatives come from this round's model
		mine "$index" "$run/scifact-train-dense.json" --model_file "$run"
		train_file=$run/scifact-train-dense.json
		start=(--model_file "$run")
	fi
done
