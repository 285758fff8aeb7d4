"""download_data.py (dpr.commands.download over dpr.data.download) without the internet: local mirrors,
checksums, resume over loopback HTTP, and the one-line failure when nothing can be reached."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import os
import socket
import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from typing import ClassVar

import pytest

from dpr.commands.download import main as download_main
from dpr.data import download
from dpr.data.download import DownloadError, Resource, select
from dpr.data.readers import iter_beir_corpus

REPO = Path(__file__).resolve().parents[1]
TOY_FILES = {
    "toyset/corpus.jsonl": '{"_id": "d1", "title": "T", "text": "hello world"}\n',
    "toyset/queries.jsonl": '{"_id": "q1", "text": "hello"}\n',
    "toyset/qrels/test.tsv": "query-id\tcorpus-id\tscore\nq1\td1\t1\n",
}


def _zip(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name, text in files.items():
            bundle.writestr(name, text)
    return buffer.getvalue()


def _use(monkeypatch, resource: Resource) -> None:
    monkeypatch.setitem(download.RESOURCES, resource.key, resource)


def _errors(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def _mirror_argv(resource: str, tmp_path) -> list[str]:
    """download_data.py fetching ``resource`` from the folder tmp_path/mirror into tmp_path/out."""
    mirror, out = str(tmp_path / "mirror"), str(tmp_path / "out")
    return ["--resource", resource, "--from", mirror, "--output_dir", out, "--no_progress"]


def test_from_mirror_verifies_and_unpacks_a_beir_zip(monkeypatch, tmp_path, capsys):
    payload = _zip(TOY_FILES)
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "toyset.zip").write_bytes(payload)
    _use(
        monkeypatch,
        Resource(
            "beir.toyset",
            "https://example.invalid/BEIR/datasets/toyset.zip",
            os.path.join("downloads", "beir", "toyset"),
            "zip",
            "toy",
            md5=hashlib.md5(payload).hexdigest(),
            sha256=hashlib.sha256(payload).hexdigest(),
        ),
    )
    argv = _mirror_argv("beir.toyset", tmp_path)
    assert download_main(argv) == 0
    folder = tmp_path / "out" / "downloads" / "beir" / "toyset"
    assert [doc_id for doc_id, _ in iter_beir_corpus(str(folder / "corpus.jsonl"))] == ["d1"]
    assert (folder / "qrels" / "test.tsv").is_file()
    assert sorted(p.name for p in folder.parent.iterdir()) == ["toyset"]  # no zip or .part left behind
    book = json.loads((tmp_path / "out" / "downloads" / "checksums.json").read_text())
    assert book == {"https://example.invalid/BEIR/datasets/toyset.zip": hashlib.sha256(payload).hexdigest()}
    assert f"beir.toyset: {folder}" in capsys.readouterr().out
    (tmp_path / "mirror" / "toyset.zip").unlink()
    assert download_main(argv) == 0  # already there: nothing fetched


def test_corrupted_file_is_detected_and_deleted(tmp_path, capsys):
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "scifact.zip").write_bytes(_zip(TOY_FILES))  # not the published SciFact zip
    code = download_main(_mirror_argv("beir.scifact", tmp_path))
    assert code == 2
    (line,) = _errors(capsys)
    assert line.startswith(
        "error: https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/scifact.zip: md5 "
    )
    assert "does not match 5f7d1de60b170fc8027bb7898e2efca1 (published)" in line
    assert not any(p.is_file() for p in (tmp_path / "out").rglob("*"))  # nothing half-made stays


def test_recorded_checksum_catches_a_changed_file(monkeypatch, tmp_path, capsys):
    mirror = tmp_path / "mirror" / "dl.example.invalid" / "dpr" / "data"  # a `wget -x` layout
    mirror.mkdir(parents=True)
    (mirror / "toy-dev.json.gz").write_bytes(gzip.compress(b'[{"question": "q"}]'))
    _use(
        monkeypatch,
        Resource(
            "data.retriever.toy-dev",
            "https://dl.example.invalid/dpr/data/toy-dev.json.gz",
            os.path.join("downloads", "data", "retriever", "toy-dev.json"),
            "gzip",
            "toy",
        ),
    )
    argv = _mirror_argv("data.retriever.toy", tmp_path)
    assert download_main(argv) == 0
    target = tmp_path / "out" / "downloads" / "data" / "retriever" / "toy-dev.json"
    assert target.read_bytes() == b'[{"question": "q"}]'
    target.unlink()
    (mirror / "toy-dev.json.gz").write_bytes(gzip.compress(b"[]"))  # the mirror's copy changed
    assert download_main(argv) == 2
    (line,) = _errors(capsys)
    assert ": sha256 " in line and "(recorded at its first download)" in line and not target.exists()


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    payload: ClassVar[bytes] = b""
    ranges: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:  # the name http.server calls
        requested = self.headers.get("Range")
        type(self).ranges.append(requested)
        start = int(requested.split("=")[1].rstrip("-")) if requested else 0
        body = self.payload[start:]
        self.send_response(206 if requested else 200)
        if requested:
            self.send_header("Content-Range", f"bytes {start}-{len(self.payload) - 1}/{len(self.payload)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_partial_download_resumes_with_a_range_request(monkeypatch, tmp_path):
    payload = os.urandom(50_000)
    _RangeHandler.payload, _RangeHandler.ranges = payload, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)  # loopback only
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        _use(
            monkeypatch,
            Resource(
                "data.toy-corpus",
                "https://dl.example.invalid/psgs.tsv",
                os.path.join("downloads", "psgs.tsv"),
                "none",
                "toy",
                sha256=hashlib.sha256(payload).hexdigest(),
            ),
        )
        part = tmp_path / "downloads" / "psgs.tsv.part"
        part.parent.mkdir(parents=True)
        part.write_bytes(payload[:20_000])  # what an interrupted run left
        code = download_main(
            [
                "--resource",
                "data.toy-corpus",
                "--output_dir",
                str(tmp_path),
                "--no_progress",
                "--mirror_url",
                f"http://127.0.0.1:{server.server_address[1]}/files",
            ]
        )
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0 and _RangeHandler.ranges == ["bytes=20000-"]
    assert (tmp_path / "downloads" / "psgs.tsv").read_bytes() == payload and not part.exists()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_host_is_one_line_and_exit_2(tmp_path):
    # a real process, so "no traceback" covers everything the user would see; loopback, never the internet
    url = f"http://127.0.0.1:{_closed_port()}"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "download_data.py"),
            "--resource",
            "beir.scifact",
            "--mirror_url",
            url,
            "--output_dir",
            str(tmp_path),
            "--no_progress",
        ],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: could not reach {url}/scifact.zip (")
    assert lines[0].endswith("; use --from DIR with a local mirror")


def test_resource_keys_follow_dpr_and_beir_layouts():
    nq = download.RESOURCES["data.retriever.nq-train"]
    assert nq.url == "https://dl.fbaipublicfiles.com/dpr/data/retriever/biencoder-nq-train.json.gz"
    assert nq.target == os.path.join("downloads", "data", "retriever", "nq-train.json") and nq.unpack == "gzip"
    psgs = download.RESOURCES["data.wikipedia_split.psgs_w100"]
    assert psgs.target == os.path.join("downloads", "data", "wikipedia_split", "psgs_w100.tsv")
    assert download.RESOURCES["data.retriever.qas.webq-test"].url.endswith("/webquestions-test.qa.csv")
    assert download.RESOURCES["beir.scifact"].md5 == "5f7d1de60b170fc8027bb7898e2efca1"
    assert len(select(["data.retriever.qas"])) == 9
    assert {r.key for r in select(["data.retriever.squad1"])} == {
        "data.retriever.squad1-train",
        "data.retriever.squad1-dev",
    }
    with pytest.raises(DownloadError, match="no resource matches 'nope'"):
        select(["nope"])


def test_zip_members_cannot_escape_the_target(tmp_path):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(_zip({"evil/ok.txt": "x", "evil/../../escaped.txt": "y"}))
    with pytest.raises(DownloadError, match="would land outside"):
        download._unpack_zip(str(archive), str(tmp_path / "target"))
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "target").exists()


def test_no_resource_lists_them(capsys):
    assert download_main([]) == 0
    out = capsys.readouterr().out
    assert "data.retriever.nq-train" in out and "beir.scifact" in out
