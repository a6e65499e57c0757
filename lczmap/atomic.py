"""Write files atomically (a temporary name beside the final path, renamed once complete), replace folders crash-safely."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any


def write_json_atomic(path: str | Path, doc: Any, indent: int = 2) -> Path:
    """Write `doc` as JSON to `path`; readers only ever see the old file or the complete new one.

    The temporary name carries the process id, so concurrent writers (batch clients) do not clobber each other.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(doc, indent=indent) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def replace_path(new: Path, final: Path) -> None:
    """Put the complete file or folder `new` at `final`, replacing what is there, crash-safely.

    The old content is never deleted before the new one is in place: both are swapped in one step where
    the system allows (then `final` holds a complete old or new store at every instant), else the old one
    is renamed aside (`.NAME.<pid>.tmp`), the new one renamed in, and only then the old one removed.
    `recover_aside(final)` restores an old store a killed run left aside.
    """
    new, final = Path(new), Path(final)
    if not final.exists() and not final.is_symlink():
        os.replace(new, final)
        return
    aside = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    _remove(aside)
    if _exchange(new, final):
        os.replace(new, aside)  # `new` now holds the old content
    else:
        os.replace(final, aside)
        os.replace(new, final)
    _remove(aside)


def recover_aside(final: Path) -> None:
    """Undo what a killed `replace_path` left: restore an old copy set aside if `final` is gone, drop the rest."""
    from .locking import clear_stale_lock, stale_temporaries

    final = Path(final)
    clear_stale_lock(final)
    for stale in sorted(stale_temporaries(final)):
        if not final.exists() and not final.is_symlink():
            os.replace(stale, final)
        else:
            _remove(stale)
