#!/usr/bin/env bash
# PT-Retrieval's published DPR recipe:
#   full fine-tuning (the baseline).
# bert-base-uncased on NQ/TriviaQA/WebQ/TREC/SQuAD retriever data
# (download_data.py), 8 GPUs; needs GPUs and a network to fetch the model.
# Extra flags are passed on (e.g. --fp16). --batch_size is per process:
# 8 processes x 16 = the published global batch of 128.
set -euo pipefail
NPROC=${NPROC:-8}
model_cfg=bert-base-uncased
bs=128
epoch=40
lr=1e-5
out=checkpoints/finetune-dpr-multidata-$bs-$epoch-$lr

torchrun --nproc_per_node "$NPROC" train_dense_encoder.py \
	--pretrained_model_cfg $model_cfg \
	--train_file "data/retriever/*-train.json" \
	--dev_file "data/retriever/*-dev.json" \
	--output_dir "$out" \
	--seed 12345 \
	--do_lower_case \
	--max_grad_norm 2.0 \
	--sequence_length 256 \
	--warmup_percentage 0.05 \
	--val_av_rank_start_epoch 30 \
	--batch_size $((bs / NPROC)) \
	--dev_batch_size $((bs / NPROC)) \
	--learning_rate $lr \
	--num_train_epochs $epoch \
	--hard_negatives 1 \
	"$@"
