"""The public DPR data (retriever JSON, QA files, psgs_w100.tsv) and BEIR datasets: the resource table,
fetching (HTTP with resume, or a local / HTTP mirror), checksums and unpacking.

Files land where DPR's own script put them: OUTPUT_DIR/downloads/data/retriever/nq-train.json,
.../data/wikipedia_split/psgs_w100.tsv (gzip is unpacked), and BEIR folders in
OUTPUT_DIR/downloads/beir/<name>/ (corpus.jsonl, queries.jsonl, qrels/). :func:`download` skips a
resource already there; an interrupted download resumes (HTTP Range) from its ``.part`` file.

Checksums: the published md5 of every BEIR zip is verified (and SciFact's sha256). DPR publishes none,
so the sha256 of each file is recorded in downloads/checksums.json on first download and verified on
every later download or mirror copy of it (:class:`ChecksumBook`). A mismatch deletes the file and fails.

A mirror folder holds each file under its URL's file name (scifact.zip, biencoder-nq-train.json.gz)
or under HOST/PATH (a ``wget -x`` mirror); a mirror URL serves URL/<file name>.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass

from tqdm import tqdm

from dpr.atomic import atomic_directory, atomic_file, commit_partial
from dpr.errors import UserError

logger = logging.getLogger(__name__)

TIMEOUT_S = 60
CHECKSUMS = "checksums.json"
_CHUNK = 1 << 20

# URLs as published by facebookresearch/DPR (dpr/data/download_data.py) and the BEIR wiki ("Datasets
# available"), with BEIR's md5 column; SciFact's sha256 is as two independent projects report it.
# Verify URLs and checksums against those pages before relying on them: hosts and files do move.
_DPR = "https://dl.fbaipublicfiles.com/dpr"
_BEIR = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets"
_NQ_LICENSE = (f"{_DPR}/nq_license/LICENSE", f"{_DPR}/nq_license/README")
_BEIR_MD5 = {
    "msmarco": "444067daf65d982533ea17ebd59501e4",
    "trec-covid": "ce62140cb23feb9becf6270d0d1fe6d1",
    "nfcorpus": "a89dba18a62ef92f7d323ec890a0d38d",
    "nq": "d4d3d2e48787a744b6f6e691ff534307",
    "hotpotqa": "f412724f78b0d91183a0e86805e16114",
    "fiqa": "17918ed23cd04fb15047f73e6c3bd9d9",
    "arguana": "8ad3e3c2a5867cdced806d6503f29b99",
    "webis-touche2020": "46f650ba5a527fc69e0a6521c5a23563",
    "cqadupstack": "4e41456d7df8ee7760a7f866133bda78",
    "quora": "18fb154900ba42a600f84b839c173167",
    "dbpedia-entity": "c2a39eb420a3164af735795df012ac2c",
    "scidocs": "38121350fc3a4d2f48850f6aff52e4a9",
    # older versions of the BEIR README list 88591ef8eb2913126d0c93ecbde6285f for fever
    "fever": "5a818580227bfb4b35bb6fa46d9b6c03",
    "climate-fever": "8b66f0a9126c521bae2bde127b4dc99d",
    "scifact": "5f7d1de60b170fc8027bb7898e2efca1",
}
_BEIR_SHA256 = {"scifact": "536e14446a0ba56ed1398ab1055f39fe852686ecad24a6306c80c490fa8e0165"}


class DownloadError(UserError):
    """A resource could not be fetched or verified; the message says which and what to do."""


@dataclass(frozen=True)
class Resource:
    """One downloadable file. ``target`` is relative to --output_dir; ``unpack``: none, gzip or zip."""

    key: str
    url: str
    target: str
    unpack: str
    desc: str
    md5: str | None = None
    sha256: str | None = None
    extra_urls: tuple[str, ...] = ()  # small companions (licenses), saved beside the target


def _dpr(key: str, path: str, ext: str, desc: str) -> Resource:
    url = f"{_DPR}/{path}"
    target = os.path.join("downloads", *key.split(".")[:-1], key.split(".")[-1] + ext)
    extra = _NQ_LICENSE if ".nq-" in key else ()
    return Resource(key, url, target, "gzip" if url.endswith(".gz") else "none", desc, extra_urls=extra)


def _resources() -> dict[str, Resource]:
    table = [
        _dpr(
            "data.wikipedia_split.psgs_w100",
            "wikipedia_split/psgs_w100.tsv.gz",
            ".tsv",
            "21M Wikipedia passages of 100 words (DPR's retrieval corpus)",
        )
    ]
    for name, file_name in (
        ("nq", "nq"),
        ("trivia", "trivia"),
        ("squad1", "squad1"),
        ("webq", "webquestions"),
        ("curatedtrec", "curatedtrec"),
    ):
        for split in ("train", "dev"):
            table.append(
                _dpr(
                    f"data.retriever.{name}-{split}",
                    f"data/retriever/biencoder-{file_name}-{split}.json.gz",
                    ".json",
                    f"{name} {split} retriever JSON with BM25 hard negatives",
                )
            )
    for name, gz in (
        ("nq-dev", ""),
        ("nq-test", ""),
        ("nq-train", ""),
        ("trivia-dev", ".gz"),
        ("trivia-test", ".gz"),
        ("trivia-train", ".gz"),
        ("squad1-test", ""),
        ("webquestions-test", ""),
        ("curatedtrec-test", ""),
    ):
        key = "webq-test" if name == "webquestions-test" else name
        table.append(
            _dpr(
                f"data.retriever.qas.{key}",
                f"data/retriever/{name}.qa.csv{gz}",
                ".csv",
                f"{key} questions and answers (QA TSV) for retrieval evaluation",
            )
        )
    for name, md5 in _BEIR_MD5.items():
        table.append(
            Resource(
                f"beir.{name}",
                f"{_BEIR}/{name}.zip",
                os.path.join("downloads", "beir", name),
                "zip",
                f"BEIR {name}: corpus.jsonl, queries.jsonl, qrels/",
                md5=md5,
                sha256=_BEIR_SHA256.get(name),
            )
        )
    return {resource.key: resource for resource in table}


RESOURCES = _resources()


def select(patterns: list[str]) -> list[Resource]:
    """Resources named by ``patterns``: an exact key, or every key starting with it (as DPR's script)."""
    chosen: dict[str, Resource] = {}
    for pattern in patterns:
        matches = (
            [RESOURCES[pattern]]
            if pattern in RESOURCES
            else [r for key, r in RESOURCES.items() if key.startswith(pattern)]
        )
        if not matches:
            raise DownloadError(f"no resource matches {pattern!r}; run without --resource for the list")
        chosen.update((r.key, r) for r in matches)
    return list(chosen.values())


# ------------------------------------------------------------------------------------------ fetching


def _mirror_file(url: str, mirror_dir: str) -> str:
    """The copy of ``url`` in a local mirror: DIR/<file name>, or DIR/<host>/<path>."""
    parsed = urllib.parse.urlparse(url)
    candidates = [
        os.path.join(mirror_dir, os.path.basename(parsed.path)),
        os.path.join(mirror_dir, parsed.netloc, parsed.path.lstrip("/")),
    ]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise DownloadError(f"{url}: not in the mirror {mirror_dir} (looked for {' and '.join(candidates)})")


def _fetch_http(url: str, part: str, progress: bool) -> None:
    """Download ``url`` into ``part``, resuming from its current size with an HTTP Range request."""
    start = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {"User-Agent": "ptv2-retrieval-download/0.1", **({"Range": f"bytes={start}-"} if start else {})}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:  # nothing left past our bytes: the part is complete
            return
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError) as err:  # DNS failure, refused connection, timeout
        reason = getattr(err, "reason", err)
        raise DownloadError(f"could not reach {url} ({reason}); use --from DIR with a local mirror") from err
    with response:
        if start and response.status != 206:
            logger.info("%s: the server ignored the resume request; starting over", url)
            start = 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length else None
        with (
            open(part, "ab" if start else "wb") as out,
            tqdm(
                total=total, initial=start, unit="B", unit_scale=True, desc=os.path.basename(url), disable=not progress
            ) as bar,
        ):
            try:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
            except OSError as err:
                raise DownloadError(
                    f"{url}: interrupted after {out.tell()} bytes ({err}); run again to resume"
                ) from err


def fetch(url: str, part: str, mirror_dir: str | None, mirror_url: str | None, progress: bool) -> None:
    """Put the bytes of ``url`` into ``part``: copied from a mirror, or downloaded (resuming ``part``)."""
    os.makedirs(os.path.dirname(part) or ".", exist_ok=True)
    if mirror_dir:
        shutil.copyfile(_mirror_file(url, mirror_dir), part)
        return
    if mirror_url:
        url = f"{mirror_url.rstrip('/')}/{os.path.basename(urllib.parse.urlparse(url).path)}"
    _fetch_http(url, part, progress)


# ------------------------------------------------------------------------------------- checksums


def file_digests(path: str) -> dict[str, str]:
    """md5 and sha256 of a file, in one pass."""
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            md5.update(block)
            sha256.update(block)
    return {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}


class ChecksumBook:
    """sha256 of every file downloaded so far (downloads/checksums.json), to verify later copies."""

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, "downloads", CHECKSUMS)
        self.known: dict[str, str] = {}
        if os.path.isfile(self.path):
            try:
                with open(self.path, encoding="utf-8") as handle:
                    self.known = dict(json.load(handle))
            except (ValueError, TypeError) as err:
                logger.warning("%s is unreadable (%s): recorded checksums are lost", self.path, err)

    def verify(self, url: str, path: str, published: dict[str, str | None]) -> None:
        """Check ``path`` against the published checksums, else against the one recorded for ``url``
        at its first download (recording it now if there is none). A mismatch deletes ``path``."""
        digests = file_digests(path)
        expected = {algo: value.lower() for algo, value in published.items() if value}
        source = "published"
        if not expected and url in self.known:
            expected, source = {"sha256": self.known[url]}, "recorded at its first download"
        for algo, value in expected.items():
            if digests[algo] != value:
                os.remove(path)
                raise DownloadError(
                    f"{url}: {algo} {digests[algo]} does not match {value} ({source}): the file "
                    "is corrupt or changed upstream; it was deleted, run again to retry"
                )
        if self.known.get(url) != digests["sha256"]:
            self.known[url] = digests["sha256"]
            with atomic_file(self.path) as handle:
                json.dump(self.known, handle, indent=1, sort_keys=True)
        logger.info(
            "%s: sha256 %s (%s)",
            url,
            digests["sha256"],
            f"matches the checksum {source}" if expected else "recorded: later downloads must match it",
        )


# ------------------------------------------------------------------------------------------ unpack


def _unpack_gzip(archive: str, target: str) -> None:
    with gzip.open(archive, "rb") as source, atomic_file(target, "wb") as out:
        shutil.copyfileobj(source, out, _CHUNK)


def _unpack_zip(archive: str, target: str) -> None:
    """Extract ``archive`` into folder ``target``, dropping a single top folder (BEIR's ``scifact/``)."""
    with zipfile.ZipFile(archive) as bundle, atomic_directory(target) as tmp:
        names = [info.filename for info in bundle.infolist() if not info.is_dir()]
        tops = {name.split("/", 1)[0] for name in names}
        strip = len(tops) == 1 and all("/" in name for name in names)
        for info in bundle.infolist():
            relative = info.filename.split("/", 1)[1] if strip and "/" in info.filename else info.filename
            if info.is_dir() or not relative:
                continue
            out = os.path.realpath(os.path.join(tmp, relative))
            if not out.startswith(os.path.realpath(tmp) + os.sep):  # "../" or absolute member names
                raise DownloadError(f"{archive}: member {info.filename!r} would land outside {target}")
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with bundle.open(info) as source, open(out, "wb") as dest:
                shutil.copyfileobj(source, dest, _CHUNK)


def download(
    resource: Resource,
    output_dir: str,
    book: ChecksumBook,
    mirror_dir: str | None = None,
    mirror_url: str | None = None,
    progress: bool = True,
) -> str:
    """Fetch, verify and unpack one resource; returns its path. Skips one already in place."""
    target = os.path.join(output_dir, resource.target)
    if os.path.exists(target):
        logger.info("%s: already at %s", resource.key, target)
        return target
    suffix = {"gzip": ".gz", "zip": ".zip"}.get(resource.unpack, "")
    archive = target + suffix
    if not os.path.exists(archive):  # a verified archive left by a crash while unpacking is reused
        fetch(resource.url, archive + ".part", mirror_dir, mirror_url, progress)
        book.verify(resource.url, archive + ".part", {"md5": resource.md5, "sha256": resource.sha256})
        commit_partial(archive + ".part", archive)  # the .part is streamed in place so a rerun can resume it
    if resource.unpack == "gzip":
        _unpack_gzip(archive, target)
    elif resource.unpack == "zip":
        _unpack_zip(archive, target)
    if suffix:
        os.remove(archive)
    for url in resource.extra_urls:
        extra = os.path.join(os.path.dirname(target), os.path.basename(url))
        if not os.path.exists(extra):
            try:
                fetch(url, extra + ".part", mirror_dir, mirror_url, progress=False)
                commit_partial(extra + ".part", extra)
            except DownloadError as err:  # a missing license copy should not fail the data itself
                logger.warning("could not fetch %s: %s", url, err)
    return target
