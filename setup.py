"""Installs the dpr and colbert packages and their command-line entry points."""

from setuptools import find_packages, setup

setup(
    name="ptv2-retrieval",
    version="0.1.0",
    description="Dense passage retrieval (DPR, ColBERT) with prefix-tuned (P-tuning v2) BERT encoders",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["dpr", "dpr.*", "colbert", "colbert.*"]),
    # The root scripts are run from a checkout; only these three are still installed, for the dpr-train /
    # dpr-embed / dpr-retrieve entry points, until their CLIs move into dpr.commands as the others did.
    py_modules=["train_dense_encoder", "generate_embeddings", "dense_retriever"],
    install_requires=[
        # torch is pinned by the install command (torch==2.13.0, a CPU wheel here); any 2.x >= 2.3 works.
        "torch>=2.3",
        # 4.46 (tuple-era BertModel) through 5.x (DynamicCache only) are tested: see README.
        "transformers>=4.46,<6",
        "faiss-cpu>=1.8",
        "numpy>=1.24",
        "tqdm>=4.60",
        "jsonlines>=3.1",
        "safetensors>=0.4",
        "ir-measures>=0.3.1",
        # BM25 hard negatives and baselines (prepare_data.py); PyStemmer gives bm25s its English stemmer.
        "bm25s>=0.3",
        "PyStemmer>=2.2",
    ],
    extras_require={
        # Everything the test suite imports: PEFT round trips, and matplotlib for the reliability plot test.
        "dev": ["pytest>=7", "peft>=0.21", "matplotlib>=3.7"],
        # Only to load exported prefixes in PEFT (export/import itself needs no PEFT). 0.21 is the version
        # tested: it offsets the position_ids a caller passes (see dpr/models/peft_interop.py).
        "peft": ["peft>=0.21"],
        "plot": ["matplotlib>=3.7"],
        # bench/: sentence-transformers only as the baseline of bench_encoding.py (6.2.0 tested; it needs
        # transformers>=5 and pulls scikit-learn/scipy), matplotlib for bench/plot_results.py.
        "bench": ["sentence-transformers>=3.0", "matplotlib>=3.7"],
    },
    entry_points={
        "console_scripts": [
            "dpr-train=train_dense_encoder:cli",
            "dpr-embed=generate_embeddings:cli",
            "dpr-retrieve=dense_retriever:cli",
            "dpr-prepare=dpr.commands.prepare:cli",
            "dpr-download=dpr.commands.download:cli",
            "dpr-export-peft=dpr.commands.export_peft:cli",
            "colbert-train=colbert.train:cli",
            "colbert-index=colbert.index:cli",
            "colbert-retrieve=colbert.retrieve:cli",
            "colbert-triples=colbert.triples:cli",
        ],
    },
)
