"""Write ColBERT text triples (query<TAB>positive<TAB>negative) from DPR retriever JSON.

  python -m colbert.triples --dpr_file data/scifact/scifact-train.json --hard_negatives 4 \\
      --out data/scifact/colbert-triples.tsv

Input is what ``prepare_data.py`` writes (BM25 hard negatives that do not contain the answer); each
question gives one triple per hard negative (its random negatives when it has none), passages as
``title | text``. ``python -m colbert.train --dpr_train_file`` does the same conversion without the file.
"""

from __future__ import annotations

import argparse
import logging
import sys

from colbert.data import triples_from_dpr, write_triples_tsv
from dpr.cli import run_cli, setup_logging
from dpr.data.readers import DataFormatError, read_dpr_files
from dpr.options import ConfigError

logger = logging.getLogger("colbert.triples")  # not __name__: under `python -m` that is "__main__"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m colbert.triples", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dpr_file", nargs="+", required=True, help="DPR JSON/JSONL files or glob patterns")
    parser.add_argument("--hard_negatives", type=int, default=1, help="triples per question (default 1)")
    parser.add_argument("--out", required=True, help="triples TSV to write")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.hard_negatives < 1:
        raise ConfigError(f"--hard_negatives must be >= 1, got {args.hard_negatives}")
    samples = read_dpr_files(args.dpr_file)
    triples, skipped = triples_from_dpr(samples, args.hard_negatives)
    if not triples:
        raise DataFormatError(f"{args.dpr_file}: no question has both a positive and a negative")
    write_triples_tsv(triples, args.out)
    print(f"{len(triples)} triples from {len(samples)} questions ({skipped} without a negative skipped) -> {args.out}")
    return 0


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
