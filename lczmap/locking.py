"""One writer per output: an fcntl lock file beside it, and the clean-up of temporaries whose writer is gone.

`output_lock(path)` holds `.NAME.lock` (an exclusive, non-blocking `flock`) for as long as a run writes
`path`; a second run on the same output stops at once with `Error: <path>: being written by process N`
(or, given `wait`, waits up to that many seconds for the holder to finish first).
The kernel drops the lock when its process dies, so a `kill -9` never leaves a stale lock behind.
Temporaries are named `.NAME.<pid>.tmp` (lczmap.atomic, predict, stage); `stale_temporaries` finds those
whose process no longer runs, so a later run can remove them without touching a live run's files.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputBusyError, OutputError

log = logging.getLogger(__name__)


def lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


_held: dict[Path, int] = {}  # locks this process holds, so a nested output_lock on the same path is a no-op


@contextlib.contextmanager
def output_lock(path: str | Path, wait: float = 0.0) -> Iterator[Path]:
    """Hold the exclusive lock on output `path` (file or folder) while the block runs (re-entrant per process).

    `wait`: seconds to wait for another holder to finish before giving up (OutputBusyError); 0 gives up at once.
    """
    path = Path(path)
    key = path.absolute()
    if key in _held:
        _held[key] += 1
        try:
            yield path
        finally:
            _held[key] -= 1
        return
    lock = lock_path(path)
    deadline = time.monotonic() + wait
    waiting = False
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"{path}: cannot create the lock file {lock.name} ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if time.monotonic() < deadline:
                if not waiting:
                    log.info("%s: being written by process %s; waiting for it to finish (up to %.0f s)", path, holder, wait)
                    waiting = True
                time.sleep(0.5)
                continue
            raise OutputBusyError(f"{path}: being written by process {holder} (wait for it, or stop it first)") from None
        # The previous holder unlinks the file on release: make sure we locked the file that is still there.
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    _held[key] = 1
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield path
    finally:
        del _held[key]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (one we may not signal still counts as running)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temporaries(path: Path, suffix: str = ".tmp") -> list[Path]:
    """`.NAME.<pid>.tmp` files (or folders; `.NAME.<pid><suffix>` for another suffix) beside `path` whose writing process is gone."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+){re.escape(suffix)}")
    out = []
    if path.parent.is_dir():
        for entry in path.parent.iterdir():
            m = pattern.fullmatch(entry.name)
            if m and not pid_alive(int(m.group(1))):
                out.append(entry)
    return out


def clear_stale_lock(path: str | Path) -> None:
    """Remove the lock file a killed writer of `path` left (nobody holds it); a held lock is left alone."""
    lock = lock_path(Path(path))
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(lock)  # a writer that opened it meanwhile sees the inode gone and takes a fresh one
    os.close(fd)
