#!/usr/bin/env bash
# PT-Retrieval's published DPR recipe, shared by run_train_dpr_multidata_*.sh:
# bert-base-uncased on NQ/TriviaQA/WebQ/TREC/SQuAD retriever data (download_data.py), 8 GPUs, batch 128,
# 40 epochs, sequence length 256, warmup 5%, max_grad_norm 2.0, 1 hard negative, average rank from epoch 30.
# Usage: dpr_multidata_recipe.sh NAME LEARNING_RATE [mode flags and extra flags...]
# --batch_size is per process: NPROC (8) processes x 16 = the published global batch of 128.
set -euo pipefail
NAME=$1
LR=$2
shift 2
NPROC=${NPROC:-8}
BS=128

torchrun --nproc_per_node "$NPROC" train_dense_encoder.py \
	--pretrained_model_cfg bert-base-uncased \
	--train_file "data/retriever/*-train.json" \
	--dev_file "data/retriever/*-dev.json" \
	--output_dir "checkpoints/$NAME-dpr-multidata-$BS-40-$LR" \
	--seed 12345 \
	--do_lower_case \
	--max_grad_norm 2.0 \
	--sequence_length 256 \
	--warmup_percentage 0.05 \
	--val_av_rank_start_epoch 30 \
	--batch_size $((BS / NPROC)) \
	--dev_batch_size $((BS / NPROC)) \
	--learning_rate "$LR" \
	--num_train_epochs 40 \
	--hard_negatives 1 \
	"$@"
