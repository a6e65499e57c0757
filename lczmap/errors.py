"""lczmap's exceptions, and the one translation of library exceptions into a line a user can act on.

Every problem with the user's input or environment is an `LczmapError` whose message is one line
`<file or option>: <what is wrong>`; the CLI prints it as `Error: <message>` with exit code 1. Subclasses
say which kind of problem it is (tests and callers may catch them); all take just the message, so they
cross process boundaries (Dask workers) intact.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path


class LczmapError(Exception):
    """A problem with the user's input or environment, explained in one line (no traceback)."""


class InputError(LczmapError):
    """An input file that is missing, unreadable, malformed or does not make sense."""


class ConfigError(InputError):
    """A wrong key or value in city.yaml, a batch pipeline or a model card."""


class OptionError(LczmapError):
    """A command-line option with a value lczmap cannot use."""


class UnsafeInputError(InputError):
    """An input that would make lczmap run code, leave its folder or read a device: refused outright."""


class OutputError(LczmapError):
    """An output path that cannot be written (unwritable, an input of the same run, a full disk)."""


class OutputBusyError(OutputError):
    """An output another lczmap process is writing right now."""


_ERRNO_TEXT = {
    errno.ENOSPC: "no space left on the device",
    errno.EFBIG: "file too large (a file-size limit was reached)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EISDIR: "is a folder, expected a file",
    errno.ENOTDIR: "a path component is not a folder",
}


_WRITE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS)
_HDF5_FILENAME = re.compile(r"filename = '([^']+)'")  # HDF5 names the file inside its message, not in OSError.filename
_TEMPORARY = re.compile(r"\.(.+)\.\d+\.tmp")  # lczmap's temporaries `.NAME.<pid>.tmp` (lczmap.atomic)


def describe(exc: BaseException) -> str:
    """What went wrong, in one line, for any exception (the library's first line; errno's name for OSError)."""
    inner = exc.__cause__ or exc.__context__
    if inner is not None and "previous exception" in str(exc):  # rasterio's "Read failed. See previous exception ..."
        return describe(inner)
    if isinstance(exc, OSError) and exc.errno in _ERRNO_TEXT:
        return _ERRNO_TEXT[exc.errno]
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = " ".join(str(exc).split("\n", 1)[0].split()) or type(exc).__name__
    if isinstance(exc, (OverflowError, ZeroDivisionError)):
        text = f"numbers out of range ({text})"
    elif isinstance(exc, MemoryError):
        text = f"not enough memory ({text})"
    elif _raised_by_codec(exc):  # blosc's, zlib's, zstd's ... words for a damaged chunk
        text = f"a compressed chunk is corrupt: {text}"
    return text


def _raised_by_codec(exc: BaseException) -> bool:
    """Whether `exc` came out of a numcodecs codec (Zarr's decompression), by the modules of its traceback."""
    tb = exc.__traceback__
    while tb is not None:
        if str(tb.tb_frame.f_globals.get("__name__", "")).startswith("numcodecs"):
            return True
        tb = tb.tb_next
    return False


def user_path(path: str | Path) -> str:
    """The path a user knows: a temporary `.NAME.<pid>.tmp` of lczmap's is shown as the NAME it becomes."""
    path = Path(path)
    match = _TEMPORARY.fullmatch(path.name)
    return str(path.with_name(match.group(1)) if match else path)


def subject(exc: BaseException, default: str) -> str:
    """The file an exception names (OSError's filename, or the file in HDF5's message), else `default`."""
    filename = getattr(exc, "filename", None)
    if isinstance(filename, (str, Path)) and str(filename):
        return user_path(filename)
    named = _HDF5_FILENAME.search(str(exc))
    return user_path(named.group(1)) if named else default


def as_lczmap_error(exc: BaseException, default: str) -> LczmapError:
    """`exc` as one LczmapError line naming the file it concerns (or `default`: the input or option in hand)."""
    if isinstance(exc, LczmapError):
        return exc
    kind = OutputError if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS else InputError
    name = subject(exc, default)
    what = describe(exc)
    if what.startswith(f"{name}:"):  # GDAL often starts its message with the path already
        what = what[len(name) + 1 :].strip()
    return kind(f"{name}: {what}")


@contextmanager
def _one_line(error: Callable[[Exception], LczmapError]) -> Iterator[None]:
    """Turn any library exception raised in the block into `error(exc)`; LczmapErrors, and bugs that
    are no input's fault (memory, recursion), pass unchanged."""
    try:
        yield
    except LczmapError:
        raise
    except (MemoryError, RecursionError):
        raise
    except Exception as exc:
        raise error(exc) from exc


def reading(name: str | Path, what: str = "") -> AbstractContextManager[None]:
    """Turn any library exception raised while reading input `name` into one LczmapError naming it.

    `what` says what the input is meant to be ("AOI", "city.yaml"); bugs still surface with -v.
    """
    label = f"{what} " if what else ""
    return _one_line(lambda exc: type(as_lczmap_error(exc, str(name)))(f"{name}: {label}cannot be read ({describe(exc)})"))


def writing(name: str | Path, what: str = "") -> AbstractContextManager[None]:
    """Turn any exception raised while writing output `name` (a temporary is named as its final path) into
    one OutputError naming it: a full disk or a file-size limit in a library that does not say which file."""
    label = f"{what} " if what else ""
    return _one_line(lambda exc: OutputError(f"{user_path(name)}: {label}cannot be written ({describe(exc)})"))
