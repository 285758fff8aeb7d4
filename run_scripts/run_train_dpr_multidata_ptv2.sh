#!/usr/bin/env bash
# PT-Retrieval's published recipe with a P-tuning v2 deep prefix of 64 tokens (the released run used lr 8e-3).
# Needs GPUs and a network (bert-base-uncased); extra flags are passed on (e.g. --fp16).
exec "$(dirname "$0")/dpr_multidata_recipe.sh" ptv2 1e-2 --prefix --pre_seq_len 64 "$@"
