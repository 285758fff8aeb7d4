"""Download the public DPR data (retriever JSON, QA files, psgs_w100.tsv) and BEIR datasets by name.

  python download_data.py --resource data.retriever.nq-train --output_dir .
  python download_data.py --resource data.retriever.qas          # every key with this prefix
  python download_data.py --resource beir.scifact --from /mnt/mirror   # copy from a local mirror
  python download_data.py                                          # list the resources

Files land where DPR's own script put them: OUTPUT_DIR/downloads/data/retriever/nq-train.json,
.../data/wikipedia_split/psgs_w100.tsv (gzip is unpacked), and BEIR folders in
OUTPUT_DIR/downloads/beir/<name>/ (corpus.jsonl, queries.jsonl, qrels/). A resource already there is
skipped. An interrupted download resumes (HTTP Range) from its ``.part`` file on the next run.

Checksums: the published md5 of every BEIR zip is verified (and SciFact's sha256). DPR publishes none,
so the sha256 of each file is recorded in downloads/checksums.json on first download and verified on
every later download or mirror copy of it. A mismatch deletes the file and fails.

--from DIR looks for each file in DIR under its URL's file name (scifact.zip, biencoder-nq-train.json.gz)
or under HOST/PATH (a ``wget -x`` mirror); --mirror_url URL fetches URL/<file name> instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from dpr.cli import run_cli, setup_logging
from dpr.data.download import RESOURCES, ChecksumBook, DownloadError, download, select

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resource", nargs="+", help="resource keys or key prefixes (none: list them)")
    parser.add_argument("--output_dir", default=".", help="files go to OUTPUT_DIR/downloads/...")
    parser.add_argument("--from", dest="mirror_dir", metavar="DIR", help="copy from this local mirror instead")
    parser.add_argument("--mirror_url", help="fetch URL/<file name> from this HTTP mirror instead")
    parser.add_argument("--no_progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if not args.resource:
        for key, resource in RESOURCES.items():
            print(f"{key:40s} {resource.desc}")
        return 0
    if args.mirror_dir and not os.path.isdir(args.mirror_dir):
        print(f"error: --from {args.mirror_dir}: no such folder", file=sys.stderr)
        return 2
    book = ChecksumBook(args.output_dir)
    try:
        for resource in select(args.resource):
            path = download(resource, args.output_dir, book, args.mirror_dir, args.mirror_url, not args.no_progress)
            print(f"{resource.key}: {path}")
    except DownloadError as err:  # one line, no traceback: the message says what to do
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
