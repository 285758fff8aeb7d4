#!/usr/bin/env bash
# Issue 17 item 5's measurement: a SciFact and a SQuAD question-side prefix (32 tokens) on minilm-l6, each with
# its task_summary.json, then bench/routing.py on one mixed stream of SciFact test and SQuAD dev queries.
#
#   bash run_scripts/cpu_routing_bench.sh            # EPOCHS_SQUAD=1 by default (one pass over ~10.7k questions)
#
# Stages that are done are skipped. No third domain is in ../shared/data: bench/routing.py --leave_one_out
# stands in for one (each domain routed with its own task unregistered).
set -euo pipefail
MODEL=${MODEL:-minilm-l6}
PY=${PYTHON:-python}
ROOT=${ROOT:-runs/recipe-$MODEL}
SQUAD=${SQUAD:-runs/route-squad}
EPOCHS_SQUAD=${EPOCHS_SQUAD:-1}
SCIFACT=$ROOT/prefix-question-s12345

# 1. SciFact: the recipe's question-side prefix (data, zero-shot index, mined negatives, training, test);
#    --task_summary writes task_summary.json into its best checkpoint.
[ -f "$SCIFACT/scifact-test-metrics.json" ] || MODE=prefix-question SEED=12345 PYTHON=$PY ROOT=$ROOT \
	bash run_scripts/cpu_scifact_recipe.sh --task_summary
# 2. SQuAD: train-subset questions (dev split by article), the 2,067 dev paragraphs as the corpus.
[ -f "$SQUAD/data/squad-train.json" ] || $PY prepare_data.py squad \
	--squad_file ../shared/data/squad1.1/train-subset-v1.1.json --eval_file ../shared/data/squad1.1/dev-v1.1.json \
	--out_dir "$SQUAD/data" --name squad --dev_ratio 0.1 --hard_negatives 7 --other_negatives 0 --seed 0 --no_progress
ls "$SQUAD"/zero-shot_0* >/dev/null 2>&1 || $PY generate_embeddings.py --pretrained_model_cfg "$MODEL" \
	--sequence_length 256 --ctx_file "$SQUAD/data/squad-passages.tsv" --out_file "$SQUAD/zero-shot" --batch_size 64 \
	--no_progress
# 3. The SQuAD question-side prefix (training passages encoded once by the base model), with its summary; its
#    dev questions' passages are train-subset paragraphs, not in the dev corpus: validation is the NLL.
[ -f "$SQUAD/run/best_checkpoint.json" ] || $PY train_dense_encoder.py --pretrained_model_cfg "$MODEL" \
	--prefix --pre_seq_len 32 --tune_side question --learning_rate 1e-2 --train_file "$SQUAD/data/squad-train.json" \
	--dev_file "$SQUAD/data/squad-dev.json" --output_dir "$SQUAD/run" --seed 12345 --sequence_length 256 \
	--batch_size 32 --dev_batch_size 64 --warmup_percentage 0.05 --max_grad_norm 2.0 --hard_negatives 7 \
	--dropout 0 --prefix_dropout 0 --num_train_epochs "$EPOCHS_SQUAD" --eval_per_epoch 1 --log_batch_step 50 \
	--task_summary
# 4. The table: 300 queries of each domain in one shuffled stream.
$PY bench/routing.py --task scifact="$SCIFACT" --task squad="$SQUAD/run" \
	--domain scifact ../shared/data/scifact/queries.jsonl ../shared/data/scifact/qrels/test.tsv "$ROOT/zero-shot_*" \
	--domain squad "$SQUAD/data/squad-test-queries.jsonl" "$SQUAD/data/squad-test-qrels.tsv" "$SQUAD/zero-shot_*" \
	--max_queries 300 --leave_one_out --out bench/results/routing.json
