#!/usr/bin/env bash
# PT-Retrieval's published recipe with BitFit (biases only).
# Needs GPUs and a network (bert-base-uncased); extra flags are passed on (e.g. --fp16).
exec "$(dirname "$0")/dpr_multidata_recipe.sh" bitfit 1e-2 --bitfit "$@"
