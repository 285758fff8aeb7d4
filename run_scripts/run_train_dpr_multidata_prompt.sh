#!/usr/bin/env bash
# PT-Retrieval's published recipe with a shallow prompt of 100 tokens (Lester et al.).
# Needs GPUs and a network (bert-base-uncased); extra flags are passed on (e.g. --fp16).
exec "$(dirname "$0")/dpr_multidata_recipe.sh" prompt 1e-2 --prompt --pre_seq_len 100 "$@"
