"""Write outputs safely: never over an input, atomically (a temporary name, renamed once complete), folders crash-safely."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import glob
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import OutputError
from .locking import clear_stale_lock, output_lock, pid_alive, stale_temporaries


def check_outputs(out: str | Path, written: Iterable[str | Path], inputs: Iterable[tuple[str, str | Path]],
                  what: str = "output") -> None:
    """Refuse, before any work, outputs that are, link to, lie inside or hold one of the inputs (OutputError).

    The rule every command's outputs follow: `written` is every path the command writes for its `--out`
    value `out`; `inputs` are (label, path) pairs such as ("the city's dsm input", path), compared after
    resolving links (URLs are skipped); `what` names the output in the message ("map", "stack").
    """
    sources = {Path(p).resolve(): label for label, p in inputs if "://" not in str(p)}
    for path in written:
        real = Path(path).resolve()
        for source, label in sources.items():
            if real == source or source in real.parents or real in source.parents:
                raise OutputError(f"--out {out}: would overwrite {label} {source}; write the {what} elsewhere")


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
    final = Path(final)
    clear_stale_lock(final)
    for stale in sorted(stale_temporaries(final)):
        if not final.exists() and not final.is_symlink():
            os.replace(stale, final)
        else:
            _remove(stale)


# A temporary's scratch folder of block files (`.NAME.<pid>.tmp.blocks`), cleaned with the temporaries once its process is gone.
BLOCKS_SUFFIX = ".tmp.blocks"


def blocks_folder(tmp: Path) -> Path:
    """The scratch folder for the block files of the temporary `tmp` (`.NAME.<pid>.tmp`) of `atomic_files`."""
    return tmp.with_name(tmp.name.removesuffix(".tmp") + BLOCKS_SUFFIX)


def _journal(first: Path, pid: int) -> Path:
    return first.with_name(f".{first.name}.{pid}.journal")


def finish_interrupted(first: Path, paths: Iterable[Path]) -> None:
    """Complete the renames of an `atomic_files` run killed after all its outputs were written; drop its other temporaries.

    A journal (listing temporary -> final names, beside `first`, the set's first path) is written only once
    every temporary is complete, so a journal of a dead process means: finish its renames, and the outputs
    are again one run's set. Then the temporaries of `paths` and their `blocks_folder`s whose process is
    gone, and a stale lock of `first`, are removed; a live process's are never touched.
    """
    first = Path(first)
    for journal in first.parent.glob(f".{glob.escape(first.name)}.*.journal"):
        pid = journal.name.rsplit(".", 2)[-2]
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        try:
            pairs = json.loads(journal.read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            pairs = []
        for tmp, final in pairs:
            if Path(tmp).parent == first.parent and Path(final).parent == first.parent and Path(tmp).exists():
                os.replace(tmp, final)
        journal.unlink(missing_ok=True)
    for half in first.parent.glob(f"..{glob.escape(first.name)}.*.journal.*.tmp"):  # cut short: never a commit point
        pid = half.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not pid_alive(int(pid)):
            half.unlink(missing_ok=True)
    for written in paths:
        for stale in stale_temporaries(Path(written)) + stale_temporaries(Path(written), BLOCKS_SUFFIX):
            _remove(stale)
    clear_stale_lock(first)  # a killed run's lock file (a held one is left alone)


@dataclass(frozen=True)
class _Record:
    anchor: Path  # the set of outputs that writes this file also commits the record
    path: Path  # the record's JSON file, in the anchor's folder
    make: Callable[[dict[Path, Path]], Any]  # its content, from the set's temporaries by final (absolute) path


# The record a caller asked to commit with a set of outputs written below it (see `committed_with`).
_pending_record: ContextVar[_Record | None] = ContextVar("lczmap_pending_record", default=None)


@contextlib.contextmanager
def committed_with(anchor: Path, path: Path, make: Callable[[dict[Path, Path]], Any]) -> Iterator[None]:
    """Inside the block, the `atomic_files` set that writes `anchor` also writes the JSON file `path`, in its journal.

    `make(temporaries)` (temporaries by absolute final path, all complete) gives the JSON content once the set's block
    succeeded; the record is renamed with the set, last, so a kill at any instruction leaves the set with its
    record or the old files with the old record, never outputs a record does not describe. Lets a caller
    (a batch recording a finished city) join the commit of a writer it only calls (`lczmap predict`'s files).
    """
    token = _pending_record.set(_Record(Path(anchor).absolute(), Path(path), make))
    try:
        yield
    finally:
        _pending_record.reset(token)


@contextlib.contextmanager
def atomic_files(paths: list[Path]) -> Iterator[list[Path]]:
    """Temporary names in the same folders; all renamed onto `paths` only when the block succeeds.

    Under the lock of `paths[0]`. Once every temporary is complete a journal records the renames, so a kill
    between two renames is completed by the next run (`finish_interrupted`): the outputs beside each other
    always end up from one run. The summary JSON is renamed last, so a summary names a finished set; a record
    of `committed_with` naming one of `paths` is written and renamed with them, after it.
    """
    record = _pending_record.get()
    if record is not None and record.anchor not in (p.absolute() for p in paths):
        record = None
    written = [*paths, *([record.path] if record else [])]
    with output_lock(paths[0]):
        finish_interrupted(paths[0], written)
        tmps = [p.with_name(f".{p.name}.{os.getpid()}.tmp") for p in written]
        try:
            yield tmps[:len(paths)]
            if record is not None:
                tmps[-1].write_text(json.dumps(record.make({p.absolute(): t for p, t in zip(paths, tmps)}), indent=2) + "\n")
        except BaseException:
            for t in tmps:
                t.unlink(missing_ok=True)
            raise
        pairs = sorted(((t, p) for t, p in zip(tmps, written) if t.exists()), key=lambda tp: tp[1].suffix == ".json")
        journal = _journal(paths[0], os.getpid())
        write_json_atomic(journal, {"files": [[str(t), str(p)] for t, p in pairs]})
        for t, p in pairs:
            os.replace(t, p)
        journal.unlink()
