#!/usr/bin/env bash
# PT-Retrieval's published recipe with full fine-tuning (the baseline).
# Needs GPUs and a network (bert-base-uncased); extra flags are passed on (e.g. --fp16).
exec "$(dirname "$0")/dpr_multidata_recipe.sh" finetune 1e-5 "$@"
