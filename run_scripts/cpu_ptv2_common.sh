# Sourced by cpu_scifact_ptv2.sh and cpu_squad_ptv2.sh (not run on its own): the P-tuning v2 training and
# corpus encoding the two CPU recipes share. Both functions read MODEL and OUT from the sourcing script.

# train_ptv2 NAME FLAG...: train a 32-vector prefix on data/NAME/NAME-{train,dev}.json into $OUT; the FLAGs
# (the recipe's epochs, validation and logging, then the user's extra flags) go last.
train_ptv2() {
	local name=$1
	shift
	python train_dense_encoder.py \
		--pretrained_model_cfg "$MODEL" \
		--prefix --pre_seq_len 32 \
		--train_file "data/$name/$name-train.json" \
		--dev_file "data/$name/$name-dev.json" \
		--output_dir "$OUT" \
		--seed 12345 \
		--sequence_length 256 \
		--batch_size 32 \
		--dev_batch_size 32 \
		--learning_rate 1e-2 \
		--warmup_percentage 0.05 \
		--max_grad_norm 2.0 \
		--hard_negatives 1 \
		--val_av_rank_start_epoch 0 \
		"$@"
}

# embed_ptv2 NAME: encode data/NAME/NAME-passages.tsv into $OUT/embeddings/NAME_* with $OUT's best checkpoint
# (--model_file with a training output folder means its best_checkpoint.json).
embed_ptv2() {
	python generate_embeddings.py --model_file "$OUT" --ctx_file "data/$1/$1-passages.tsv" \
		--out_file "$OUT/embeddings/$1" --batch_size 64
}
