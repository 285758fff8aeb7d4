"""Atomic writes: disk-full errors, the user's umask, and the leftovers of a killed writer."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from dpr import atomic
from dpr.atomic import OutputWriteError, atomic_directory, atomic_file, remove_orphans
from dpr.cli import run_cli
from dpr.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _disk_full(*args) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path) -> int:
    return os.stat(path).st_mode & 0o777


def _names(folder) -> list[str]:
    return sorted(os.listdir(folder))


# -------------------------------------------------------------------------------------- disk full


@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
def test_a_full_disk_while_writing_a_file_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch, where):
    target = tmp_path / "run.trec"
    target.write_text("old\n")
    if where == "fsync":
        monkeypatch.setattr(atomic.os, "fsync", _disk_full)
    if where == "replace":
        monkeypatch.setattr(atomic.os, "replace", _disk_full)
    with pytest.raises(OutputWriteError) as caught:
        with atomic_file(target) as handle:
            handle.write("new\n")
            if where == "write":
                _disk_full()  # what handle.write raises when the disk fills up
    message = str(caught.value)
    assert str(target) in message and "No space left on device (ENOSPC)" in message
    assert "nothing partial was left" in message and "unchanged" in message
    assert isinstance(caught.value, UserError) and caught.value.errno == errno.ENOSPC
    assert target.read_text() == "old\n" and _names(tmp_path) == ["run.trec"]


def test_a_full_disk_while_filling_a_folder_keeps_the_previous_folder(tmp_path):
    target = tmp_path / "embeddings"
    with atomic_directory(target) as tmp:
        np.save(os.path.join(tmp, "vectors.npy"), np.zeros(3))
    with pytest.raises(
        OutputWriteError,
        match=r"could not write the folder .*embeddings: No space left on device "
        r"\(ENOSPC\); nothing partial was left .*unchanged",
    ):
        with atomic_directory(target) as tmp:
            np.save(os.path.join(tmp, "vectors.npy"), np.ones(3))
            _disk_full()
    assert np.load(target / "vectors.npy").tolist() == [0, 0, 0] and _names(tmp_path) == ["embeddings"]


def test_a_failed_swap_puts_the_previous_folder_back(tmp_path, monkeypatch):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as tmp:
        open(os.path.join(tmp, "a.txt"), "w").write("old")
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(src)
        if len(calls) == 2:  # path -> .old-*, then tmp -> path fails
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(OutputWriteError, match="Input/output error"):
        with atomic_directory(target) as tmp:
            open(os.path.join(tmp, "a.txt"), "w").write("new")
    assert (target / "a.txt").read_text() == "old" and _names(tmp_path) == ["ckpt"]


def test_the_cli_prints_a_write_error_as_one_line(tmp_path, capsys):
    def main(argv):
        with atomic_file(tmp_path / "out.json") as handle:
            handle.write("{")
            _disk_full()

    assert run_cli(main, []) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: could not write the file ") and err.count("\n") == 1


def test_a_missing_input_read_inside_the_block_is_not_called_a_write_error(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        with atomic_file(tmp_path / "out.txt") as handle:
            handle.write(open(tmp_path / "missing.txt").read())
    assert not isinstance(caught.value, OutputWriteError) and _names(tmp_path) == []


def test_an_unwritable_folder_is_a_write_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputWriteError, match=r"could not write the file .*file/out.txt: .*; nothing was written"):
        with atomic_file(tmp_path / "file" / "out.txt") as handle:
            handle.write("x")


# ------------------------------------------------------------------------------------------- umask


def test_outputs_get_the_users_umask(tmp_path, umask_022):
    from safetensors.numpy import save_file

    with atomic_file(tmp_path / "run.trec") as handle:
        handle.write("q1 Q0 d1 1 1.0 x\n")
    with atomic_directory(tmp_path / "ckpt") as tmp:
        save_file({"w": np.zeros(2, dtype=np.float32)}, os.path.join(tmp, "model.safetensors"))  # makes 0600
        os.makedirs(os.path.join(tmp, "sub"), mode=0o700)
        script = os.path.join(tmp, "sub", "run.sh")
        open(script, "w").close()
        os.chmod(script, 0o700)
    assert _mode(tmp_path / "run.trec") == 0o644
    assert _mode(tmp_path / "ckpt") == 0o755 and _mode(tmp_path / "ckpt" / "sub") == 0o755
    assert _mode(tmp_path / "ckpt" / "model.safetensors") == 0o644
    assert _mode(tmp_path / "ckpt" / "sub" / "run.sh") == 0o755


def test_a_private_umask_is_kept(tmp_path):
    previous = os.umask(0o077)
    try:
        with atomic_file(tmp_path / "a.txt") as handle:
            handle.write("x")
        with atomic_directory(tmp_path / "d") as tmp:
            open(os.path.join(tmp, "b.txt"), "w").close()
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "a.txt") == 0o600 and _mode(tmp_path / "d") == 0o700
    assert _mode(tmp_path / "d" / "b.txt") == 0o600


# ----------------------------------------------------------------------------------------- orphans


def _age(path, seconds: float = 3600) -> None:
    """Date ``path`` back, as if a previous run had left it."""
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_leftovers_of_a_previous_run_are_removed_by_the_next_write(tmp_path):
    stale_file = tmp_path / ".out.txt.abcd1234.tmp"
    stale_file.write_text("half")
    stale_dir = tmp_path / ".ckpt.wxyz_789.tmp"
    stale_dir.mkdir()
    (stale_dir / "model.safetensors").write_text("half")
    stale_old = tmp_path / ".ckpt.old-qwer5678"  # the target exists: a swap killed before the delete
    stale_old.mkdir()
    other = tmp_path / ".other.txt.abcd1234.tmp"  # another target's temp: not this write's business
    other.write_text("")
    for path in (stale_file, stale_dir, stale_old, other):
        _age(path)
    (tmp_path / "ckpt").mkdir()
    with atomic_file(tmp_path / "out.txt") as handle:
        handle.write("x")
    with atomic_directory(tmp_path / "ckpt"):
        pass
    assert _names(tmp_path) == [".other.txt.abcd1234.tmp", "ckpt", "out.txt"]
    assert remove_orphans(tmp_path) == [str(other)] and _names(tmp_path) == ["ckpt", "out.txt"]


def test_a_live_writers_temp_is_left_alone(tmp_path):
    locked = tmp_path / ".out.txt.abcd1234.tmp"  # a writer in another process, still writing
    locked.write_text("in progress")
    _age(locked)
    fresh = tmp_path / ".out.txt.efgh5678.tmp"  # created after this process started
    fresh.write_text("in progress")
    with open(locked) as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # flock conflicts between open files, same process too
        assert remove_orphans(tmp_path, "out.txt") == []
    assert _names(tmp_path) == [".out.txt.abcd1234.tmp", ".out.txt.efgh5678.tmp"]


def test_a_folder_moved_aside_by_a_killed_swap_is_put_back(tmp_path):
    old = tmp_path / ".index.old-abcd1234"
    old.mkdir()
    (old / "meta.json").write_text("{}")
    older = tmp_path / ".index.old-zzzz0000"
    older.mkdir()
    _age(old, 100)
    _age(older, 200)
    assert remove_orphans(tmp_path) == [str(tmp_path / "index"), str(older)]
    assert _names(tmp_path) == ["index"] and (tmp_path / "index" / "meta.json").read_text() == "{}"


KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from dpr import atomic
    target = sys.argv[1]
    with atomic.atomic_file(os.path.join(target, "a.txt")) as handle:
        handle.write("old")
    real_replace = os.replace
    def replace(src, dst):
        if src.endswith(".tmp"):             # the old folder is aside, the new one not yet in place
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)
    atomic.os.replace = replace
    with atomic.atomic_directory(target) as tmp:
        open(os.path.join(tmp, "a.txt"), "w").write("new")
""")


def test_a_writer_killed_mid_swap_loses_nothing_and_the_next_run_cleans_up(tmp_path):
    target = tmp_path / "ckpt"
    run = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], cwd=ROOT, timeout=60)
    assert run.returncode == -9
    left = _names(tmp_path)
    assert "ckpt" not in left and len(left) == 2  # .ckpt.old-* (the old version) and .ckpt.*.tmp
    time.sleep(0.05)  # the next run starts after the kill
    cleanup = "import sys; from dpr.atomic import remove_orphans; print(len(remove_orphans(sys.argv[1])))"
    out = subprocess.run(
        [sys.executable, "-c", cleanup, str(tmp_path)], cwd=ROOT, timeout=60, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "2" and _names(tmp_path) == ["ckpt"]
    assert (target / "a.txt").read_text() == "old"


def test_a_folder_is_flushed_to_disk_before_its_swap(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(
        atomic.os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd)
    )
    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        os.makedirs(os.path.join(tmp, "sub"))
        with open(os.path.join(tmp, "sub", "a.bin"), "wb") as handle:
            handle.write(b"x")
    names = {os.path.relpath(p, tmp) for p in synced}
    assert {os.path.join("sub", "a.bin"), "sub", "."} <= names
    assert (target / "sub" / "a.bin").read_bytes() == b"x"


def test_commit_partial_renames_a_finished_part_file(tmp_path):
    part, final = tmp_path / "data.gz.part", tmp_path / "data.gz"
    part.write_bytes(b"abc")
    atomic.commit_partial(part, final)
    assert final.read_bytes() == b"abc" and not part.exists()
    with pytest.raises(OutputWriteError, match=r"could not write the file .*data2: .*stays in"):
        atomic.commit_partial(tmp_path / "missing.part", tmp_path / "sub-missing" / "data2")
