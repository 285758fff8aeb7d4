"""Crash-safe writes: a file or folder appears complete under its final name, or not at all.

A write goes to a temporary sibling (``.<name>.XXXXXXXX.tmp``) that is renamed over the target only when
it is complete; a folder being replaced is first moved aside as ``.<name>.old-XXXXXXXX``. Failures are
cleaned up, and an OS error while writing (disk full, read-only disk, no permission) becomes an
:class:`OutputWriteError` naming the target, the OS reason and what was left.

A process killed mid-write cannot clean up, so the next write of the same target (or
:func:`remove_orphans`) does: every writer holds an ``flock`` on its temporary file or folder (released
by the kernel when the process dies, even on SIGKILL), so a leftover that can be locked and is older
than this process is an orphan. Writers of the same target in other processes are never touched.

Files and folders get the permissions a plain ``open()``/``mkdir()`` would give under the user's umask,
also those written inside :func:`atomic_directory` by libraries that make private files (safetensors
writes ``0600``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from typing import IO, Iterator

from dpr.errors import UserError

try:
    import fcntl
except ImportError:  # not POSIX: orphans are recognised by age alone
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

# Temporaries older than this are not being written by a process that started after us; with the lock
# test this tells a dead writer's leftovers from a live writer's work in progress.
_STARTED = time.time()

# errnos that mean "the output could not be written" whatever file raised them
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}

_RANDOM = r"[a-z0-9_]{8}"  # tempfile's random part (tempfile._RandomNameSequence)
_ORPHAN = re.compile(rf"^\.(?P<name>.+)\.(?:(?P<tmp>{_RANDOM})\.tmp|old-(?P<old>{_RANDOM}))$")


class OutputWriteError(UserError, OSError):
    """An output file or folder could not be written (disk full, no permission, ...); ``errno`` is the
    OS error's, ``filename`` the final path; nothing partial is left under or beside that path."""

    def __str__(self) -> str:
        return str(self.strerror)


def _default_mode(directory: bool) -> int:
    """The permissions a plain open()/mkdir() would give (mkstemp/mkdtemp make files private)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def _reason(err: OSError) -> str:
    if err.errno is None:
        return str(err)
    return f"{os.strerror(err.errno)} ({errno.errorcode.get(err.errno, err.errno)})"


def _write_error(path: str, kind: str, err: OSError, tmp: str | None) -> OutputWriteError:
    if tmp is None:
        left = "nothing was written"
    elif os.path.lexists(tmp):
        left = f"the partial temporary {kind} {tmp} could not be removed: delete it by hand"
    else:
        left = f"nothing partial was left (the temporary {kind} was removed)"
    unchanged = f"; the previous {path} is unchanged" if os.path.lexists(path) else ""
    return OutputWriteError(err.errno, f"could not write the {kind} {path}: {_reason(err)}; {left}{unchanged}", path)


def _is_write_error(err: BaseException, tmp: str, path: str) -> bool:
    """An OSError of the write itself, not e.g. a missing input file read inside the ``with`` block."""
    if not isinstance(err, OSError) or isinstance(err, OutputWriteError) and err.filename == path:
        return False
    if err.errno in _WRITE_ERRNOS:
        return True
    names = [os.path.abspath(os.fspath(n)) for n in (err.filename, err.filename2) if n is not None]
    return any(n == path or n == tmp or n.startswith(tmp + os.sep) for n in names)


def _try_lock(fd: int) -> bool | None:
    """Exclusive non-blocking flock: True if taken, False if another open file holds it, None if unknown."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:  # e.g. ENOLCK on a file system without locks
        return None


def _lock(fd: int) -> None:
    if fcntl is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


# ----------------------------------------------------------------------------------------- orphans


def _orphan_is_dead(path: str, fd: int) -> bool:
    """Locked by nobody (or locks unsupported) and last modified before this process started."""
    if os.fstat(fd).st_mtime >= _STARTED:
        return False
    return _try_lock(fd) is not False


def _clean_one(parent: str, entry: str, match: re.Match) -> str | None:
    """Remove one dead temporary, or put back a dead ``.old-*`` folder whose target is missing."""
    path, target = os.path.join(parent, entry), os.path.join(parent, match["name"])
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # gone meanwhile, or not ours to read: leave it
        return None
    try:
        if not _orphan_is_dead(path, fd):
            return None
        if match["old"] is not None and not os.path.lexists(target):
            try:
                os.rename(path, target)  # the previous good version, moved aside by a killed swap
                logger.warning("restored %s from %s, left by an interrupted write", target, path)
                return target
            except OSError:
                pass  # the target appeared meanwhile: this copy is stale
        _remove(path)
        logger.info("removed %s, left by an interrupted write", path)
        return path
    finally:
        os.close(fd)


def remove_orphans(directory: str | os.PathLike, name: str | None = None) -> list[str]:
    """Clean up after writers killed mid-write in ``directory`` (only those of target ``name`` if given).

    Removes ``.<name>.XXXXXXXX.tmp`` files and folders and ``.<name>.old-XXXXXXXX`` folders that no live
    process holds and that are older than this process; an ``.old-*`` folder whose target is missing is
    the previous complete version and is renamed back instead. Returns the paths removed or restored.
    """
    directory = os.fspath(directory)
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return []
    matches = [
        (entry, m)
        for entry in entries
        if (m := _ORPHAN.match(entry)) is not None and (name is None or m["name"] == name)
    ]
    # newest first: of several .old-* copies of a missing target, the latest is the one put back
    matches.sort(key=lambda pair: _mtime(os.path.join(directory, pair[0])), reverse=True)
    done = []
    for entry, match in matches:
        result = _clean_one(directory, entry, match)
        if result is not None:
            done.append(result)
    return done


def _mtime(path: str) -> float:
    try:
        return os.lstat(path).st_mtime
    except OSError:
        return 0.0


# ------------------------------------------------------------------------------------------ writes


def _prepare(path: str, kind: str) -> tuple[str, str]:
    """``(parent, basename)`` of ``path`` with the parent created and old orphans of ``path`` cleaned."""
    parent, base = os.path.split(path)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as err:
        raise _write_error(path, kind, err, None) from err
    remove_orphans(parent, base)
    return parent, base


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it over ``path`` only if the block succeeds.

    Raises OutputWriteError when the file cannot be written (the temporary file is removed first).
    """
    path = os.path.abspath(os.fspath(path))
    parent, base = _prepare(path, "file")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=parent)
    except OSError as err:
        raise _write_error(path, "file", err, None) from err
    try:
        _lock(fd)  # held until the rename: see remove_orphans
        kwargs = {"encoding": encoding} if "b" not in mode else {}
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
            os.chmod(tmp, _default_mode(directory=False))
            os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if _is_write_error(err, tmp, path):
            raise _write_error(path, "file", err, tmp) from err  # type: ignore[arg-type]
        raise


def _widen_modes(root: str) -> None:
    """Give every file and folder under ``root`` at least the permissions the umask allows."""
    file_mode, dir_mode = _default_mode(directory=False), _default_mode(directory=True)
    for folder, _, files in os.walk(root):
        _widen(folder, dir_mode)
        for name in files:
            _widen(os.path.join(folder, name), file_mode, executable=dir_mode & 0o111)


def _widen(path: str, wanted: int, executable: int = 0) -> None:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return
    current = stat.S_IMODE(st.st_mode)
    target = current | wanted | (executable if current & stat.S_IXUSR else 0)
    if target != current:
        os.chmod(path, target)


def _fsync_tree(root: str) -> None:
    """Flush every file under ``root``, then the folders, to disk: the rename must not outrun the data."""
    for folder, _, files in os.walk(root):
        for name in files:
            file_path = os.path.join(folder, name)
            if not os.path.islink(file_path):
                _fsync_path(file_path)
        _fsync_path(folder)


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.EBADF):  # folders cannot be fsynced on some file systems
            raise
    finally:
        os.close(fd)


def commit_partial(part: str | os.PathLike, path: str | os.PathLike) -> None:
    """Flush ``part`` to disk and rename it to ``path`` atomically.

    For a file that is written in place under a temporary name because the writing must survive the process
    (a resumable download's ``.part``): :func:`atomic_file` is for everything written in one go.
    """
    part, path = os.fspath(part), os.fspath(path)
    try:
        _fsync_path(part)
        os.replace(part, path)
    except OSError as err:
        message = f"could not write the file {path}: {_reason(err)}; what was written so far stays in {part}"
        raise OutputWriteError(err.errno, message, path) from err


def _swap(tmp: str, path: str, base: str) -> None:
    """Rename ``tmp`` to ``path``; an existing ``path`` is moved aside first and put back on failure."""
    if not os.path.lexists(path):
        os.replace(tmp, path)
        return
    parent = os.path.dirname(path)
    # Lock the current version so that a cleaner does not take it, once moved aside, for an orphan.
    fd = os.open(path, os.O_RDONLY)
    try:
        _lock(fd)
        old = _free_name(parent, f".{base}.old-", "")
        os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(old, path)
            raise
        # Renamed to a temporary's name before deleting: a delete killed halfway leaves a .tmp (removed
        # later), never a half-deleted .old-* that a cleaner would put back as the previous version.
        trash = _free_name(parent, f".{base}.", ".tmp")
        os.replace(old, trash)
        _remove(trash)
    finally:
        os.close(fd)


def _free_name(parent: str, prefix: str, suffix: str) -> str:
    """A fresh name in ``parent`` of tempfile's pattern (reserved by creating it, then freed)."""
    name = tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent)
    os.rmdir(name)
    return name


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary folder to fill; it replaces ``path`` only if the block succeeds.

    An existing ``path`` is moved aside first and deleted after the swap, so a crash at any point leaves
    either the old or the new folder under ``path`` (or the old one beside it, named ``.<name>.old-*``,
    which the next write of ``path`` or :func:`remove_orphans` puts back). Everything in the folder is flushed
    to disk before the swap. Raises OutputWriteError when
    the folder cannot be written (the temporary folder is removed first).
    """
    path = os.path.abspath(os.fspath(path))
    parent, base = _prepare(path, "folder")
    try:
        tmp = tempfile.mkdtemp(prefix=f".{base}.", suffix=".tmp", dir=parent)
        fd = os.open(tmp, os.O_RDONLY)
    except OSError as err:
        raise _write_error(path, "folder", err, None) from err
    try:
        _lock(fd)  # held until the swap: see remove_orphans
        os.chmod(tmp, _default_mode(directory=True))
        yield tmp
        _widen_modes(tmp)
        _fsync_tree(tmp)
        _swap(tmp, path, base)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_write_error(err, tmp, path):
            raise _write_error(path, "folder", err, tmp) from err  # type: ignore[arg-type]
        raise
    finally:
        os.close(fd)
