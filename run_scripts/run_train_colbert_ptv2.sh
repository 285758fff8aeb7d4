#!/usr/bin/env bash
# ColBERT v1's published MS MARCO passage recipe (--amp --doc_maxlen 180 --mask-punctuation
# --bsize 32 --accum 1 --similarity l2, 200k steps) with a P-tuning v2 deep prefix, as in
# PT-Retrieval: one 64-token prefix shared by queries and documents; lr 1e-2 as for the
# prefix DPR recipe (ColBERT's fine-tuning default is 3e-6; the projection trains at
# --linear_lr, default 1e-4). bert-base-uncased, one CUDA GPU (or torchrun --nproc_per_node N
# -m colbert.train ...: each GPU takes bsize/N), a network to fetch the model, and MS MARCO's
# triples.train.small.tsv. The checkpoint stores the prefix length, so indexing and
# retrieval need no prefix flags (a contradicting one is an error). Extra flags are passed on.
set -euo pipefail
model_cfg=bert-base-uncased
triples=data/msmarco/triples.train.small.tsv
lr=1e-2
out=checkpoints/ptv2-colbert-msmarco-l2-$lr

python -m colbert.train \
	--pretrained_model_cfg $model_cfg \
	--triples $triples \
	--output_dir "$out" \
	--prefix --pre_seq_len 64 \
	--query_maxlen 32 --doc_maxlen 180 --dim 128 \
	--similarity l2 --mask-punctuation \
	--bsize 32 --accum 1 --lr $lr \
	--maxsteps 200000 --save_every 20000 \
	--amp --resume "$@"
