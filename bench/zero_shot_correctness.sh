#!/usr/bin/env bash
# Correctness on real data (issue 4): zero-shot all-MiniLM-L6-v2 (minilm-l6: mean pooling, L2-normalised,
# "title text" passages, 256 tokens, as sentence-transformers runs it) through our own CLIs:
#   SciFact test nDCG@10 (published MTEB score 0.645), flat vs HNSW recall@10 and queries/s;
#   SQuAD v1.1 dev paragraphs (2,067) as the corpus for the 10,570 dev questions: R@20 (about 0.95).
# About 15 minutes on a 2-core CPU. Results land in $OUT/*.json.
set -euo pipefail
OUT=${OUT:-runs/bench-zero-shot}
DATA=${DATA:-../shared/data}
M=(--pretrained_model_cfg minilm-l6 --sequence_length 256)

python generate_embeddings.py "${M[@]}" --ctx_file "$DATA/scifact/corpus.jsonl" --out_file "$OUT/scifact" --no_progress
python dense_retriever.py "${M[@]}" --encoded_ctx_file "$OUT/scifact_*" --beir_dir "$DATA/scifact" --split test \
	--n-docs 1000 --metrics_file "$OUT/scifact-flat.json" --no_progress
python dense_retriever.py "${M[@]}" --encoded_ctx_file "$OUT/scifact_*" --beir_dir "$DATA/scifact" --split test \
	--n-docs 1000 --index_type hnsw --hnsw_m 32 --metrics_file "$OUT/scifact-hnsw.json" --no_progress

python prepare_data.py squad --squad_file "$DATA/squad1.1/train-subset-v1.1.json" \
	--eval_file "$DATA/squad1.1/dev-v1.1.json" --out_dir "$OUT/squad" --name squad --no_progress
python generate_embeddings.py "${M[@]}" --ctx_file "$OUT/squad/squad-passages.tsv" --out_file "$OUT/squad" --no_progress
python dense_retriever.py "${M[@]}" --encoded_ctx_file "$OUT/squad_*" --beir_dir "$OUT/squad" --split test \
	--n-docs 100 --metrics_file "$OUT/squad-recall.json" --no_progress
python dense_retriever.py "${M[@]}" --encoded_ctx_file "$OUT/squad_*" --qa_file "$OUT/squad/squad-test-qa.tsv" \
	--ctx_file "$OUT/squad/squad-passages.tsv" --n-docs 100 --metrics_file "$OUT/squad-answers.json" --no_progress
python bench/bench_search.py --embeddings "$OUT/scifact_*" --num_queries 2000 --json "$OUT/search-scifact.json"
