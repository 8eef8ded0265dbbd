"""An exclusive lock on an output folder, so two processes never write one run folder at once.

``with run_lock(folder, what="distill"):`` takes ``fcntl.flock`` on ``<folder>/.lock``. The kernel drops
a flock when its holder exits for any reason (SIGKILL, OOM, power loss of the process), so a crashed
run never leaves the folder stuck: the next run finds the stale file unlocked and takes it. The file
records pid / host / command / start time only to make the refusal message useful.

The lock is re-entrant within one process (a recipe that holds its run folder may call ``distill``
or ``export`` into that same folder) but not across processes, nor across two independent opens of
one folder from different processes. POSIX only (``fcntl``); elsewhere it degrades to no locking.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

from .errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; the lock becomes advisory-free
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"

# folder (resolved) -> (open lock file descriptor, nesting depth); guarded by _GUARD
_HELD: Dict[str, Tuple[int, int]] = {}
_GUARD = threading.Lock()


def _key(folder: Path) -> str:
    return os.path.realpath(folder)


def _holder(lock_file: Path) -> str:
    """'pid N on HOST, started T: COMMAND' from the lock file, as far as it can be read."""
    try:
        info = json.loads(lock_file.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "pid unknown"
    where = f" on {info['host']}" if info.get("host") and info["host"] != socket.gethostname() else ""
    started = f", started {info['started']}" if info.get("started") else ""
    what = f", {info['what']}" if info.get("what") else ""
    cmd = str(info.get("command") or "")
    cmd = f" ({cmd[:97] + '...' if len(cmd) > 100 else cmd})" if cmd else ""
    return f"pid {info['pid']}{where}{what}{cmd}{started}"


def _open_locked(folder: Path) -> int:
    """Open ``folder/.lock`` and flock it (non-blocking); returns the fd or raises UserError."""
    path = folder / LOCK_NAME
    for _ in range(20):  # retries only when a releasing holder unlinked the file under us
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            continue  # the folder was removed (an emptied folder cleaned up by its releasing owner)
        except OSError as e:
            raise UserError(f"cannot lock {folder}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise UserError(f"{folder} is in use by another infoard-deploy process ({_holder(path)}); "
                                f"wait for it or use another --out") from None
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return fd  # a file system without flock (some network mounts): run unlocked rather than not at all
            os.close(fd)
            raise UserError(f"cannot lock {folder}: {e.strerror or e}") from None
        # The holder unlinks the file on release; if that happened between our open and flock we hold
        # a lock on a dead inode that nobody else will see: start again with the current file.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)
    raise UserError(f"cannot lock {folder}: the lock file keeps changing (another process is racing for it)")


def _record(fd: int, what: str) -> None:
    argv = [os.path.basename(sys.argv[0])] + sys.argv[1:] if sys.argv and sys.argv[0] else sys.argv[1:]
    info = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(argv)[:500]}
    data = (json.dumps(info) + "\n").encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError:
        pass  # the record only improves an error message; the lock itself is held


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, what: str = "distill") -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if missing) for the ``with`` block; yields the folder.

    Raises :class:`UserError` ("<folder> is in use by another infoard-deploy process (pid N, ...)") when
    another process holds it. On release the lock file is removed, and so is ``folder`` itself when this
    call created it and nothing else was written into it (a run refused early leaves no empty folder).
    """
    folder = Path(folder)
    if fcntl is None:  # pragma: no cover
        yield folder
        return
    key = _key(folder)
    with _GUARD:
        if key in _HELD:
            fd, depth = _HELD[key]
            _HELD[key] = (fd, depth + 1)
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield folder
        finally:
            with _GUARD:
                fd, depth = _HELD[key]
                _HELD[key] = (fd, depth - 1)
        return
    created = not folder.exists()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file, expected a folder")
    fd = _open_locked(folder)
    _record(fd, what)
    with _GUARD:
        _HELD[key] = (fd, 1)
    try:
        yield folder
    finally:
        with _GUARD:
            del _HELD[key]
        _release(folder, fd, created)


def _release(folder: Path, fd: int, created: bool) -> None:
    # Unlink while still holding the lock, so a waiting process never locks a file we are deleting
    # (it re-checks the inode after locking, see _open_locked).
    with contextlib.suppress(OSError):
        (folder / LOCK_NAME).unlink()
    os.close(fd)
    if created:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only succeeds when empty


def holder_of(folder: str | os.PathLike) -> Optional[str]:
    """Who holds ``folder``'s lock ('pid N, ...'), or None when it is free. For status messages and tests."""
    path = Path(folder) / LOCK_NAME
    if fcntl is None or not path.exists():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _holder(path)
    finally:
        os.close(fd)  # closing drops the shared lock we may have taken
    return None


__all__ = ["run_lock", "holder_of", "LOCK_NAME"]
