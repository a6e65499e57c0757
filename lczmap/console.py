"""What reaches the console: lczmap's log lines at the level -v/-q ask for, the libraries' own chatter only at -vv.

TensorFlow (absl, oneDNN, CUDA, XLA) writes its start-up lines straight to file descriptor 2 while it is
imported, before any of its settings applies (TF_CPP_MIN_LOG_LEVEL covers only later lines), so below -vv its
import runs with descriptor 2 pointed at a temporary file, whose lines are then logged as the library's own
records. Library log records and Python warnings (pyogrio's RuntimeWarnings, numpy's, Dask's) pass only at -vv.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

LIBRARY_VERBOSITY = 2  # -vv: the libraries' warnings and start-up lines too; -vvv: their debug lines
VERBOSITY_ENV = "LCZMAP_VERBOSITY"  # read by worker processes, which inherit it (lczmap.process.configure_process)
NOISY_IMPORTS = ("tensorflow",)  # packages that print to descriptor 2 while imported


def verbosity_level(verbosity: int) -> int:
    """lczmap's log level for a verbosity (-q = -1: warnings; 0: info; -v and more: debug)."""
    return logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the moment (a test runner swaps it per invocation)."""

    def __init__(self, verbosity: int):
        super().__init__()
        self.verbosity = verbosity
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # logging.StreamHandler.__init__ assigns one; sys.stderr is used instead
        pass

    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name == "lczmap" or record.name.startswith("lczmap.")
        return (ours or self.verbosity >= LIBRARY_VERBOSITY) and super().filter(record)


def configure(verbosity: int) -> None:
    """Set up this process's console for `verbosity` (-q = -1, default 0, -v = 1, -vv = 2); may be called again."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    root.addHandler(_StderrHandler(verbosity))
    root.setLevel(logging.DEBUG if verbosity > LIBRARY_VERBOSITY else logging.WARNING)
    logging.getLogger("lczmap").setLevel(verbosity_level(verbosity))
    logging.captureWarnings(True)  # library warnings become records of `py.warnings`: shown at -vv with the rest
    os.environ[VERBOSITY_ENV] = str(verbosity)
    quiet_library_imports(verbosity)


def inherited_verbosity() -> int:
    """The verbosity the command line set in this process, or that a worker process inherited (0 if none)."""
    try:
        return int(os.environ.get(VERBOSITY_ENV, "0"))
    except ValueError:
        return 0


def quiet_library_imports(verbosity: int | None = None) -> None:
    """Below -vv, import NOISY_IMPORTS with their start-up lines logged as their debug records (idempotent).

    `verbosity` None: the one this process inherited (VERBOSITY_ENV), as in a Dask worker.
    """
    if verbosity is None:
        verbosity = inherited_verbosity()
    hooks = [f for f in sys.meta_path if isinstance(f, _QuietImports)]
    if verbosity >= LIBRARY_VERBOSITY:
        for hook in hooks:
            sys.meta_path.remove(hook)
    elif not hooks:
        sys.meta_path.insert(0, _QuietImports())


class _QuietImports(importlib.abc.MetaPathFinder):
    """Finds NOISY_IMPORTS as the other finders do, with a loader that captures descriptor 2 while it runs."""

    def find_spec(self, name: str, path: Any = None, target: ModuleType | None = None) -> Any:
        if name not in NOISY_IMPORTS or name in sys.modules:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    """A package's own loader, running its code with descriptor 2 captured (everything else is the loader's)."""

    def __init__(self, loader: Any):
        self._loader = loader

    def create_module(self, spec: Any) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with native_output_logged(module.__name__):
            self._loader.exec_module(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


@contextlib.contextmanager
def native_output_logged(source: str) -> Iterator[None]:
    """Point descriptor 2 at a temporary file for the block, then log each line written to it as a debug record
    of the logger `source` (a library's; at -vv nothing is captured: the lines show as they are).

    Python's own writes go through sys.stderr; the command line gives it a descriptor of its own
    (`separate_python_stderr`), so lczmap's lines written meanwhile by other threads are not caught.
    If the block fails, what it wrote is shown as it was: it may say why.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no descriptor 2 (a closed stderr): nothing to capture
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            capture.seek(0)
            os.write(2, capture.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        library = logging.getLogger(source)
        for line in capture.read().decode(errors="replace").splitlines():
            if line.strip():
                library.debug("%s", line)


def separate_python_stderr() -> None:
    """Give Python's sys.stderr a descriptor of its own (a copy of 2), so capturing descriptor 2 leaves it alone.

    For the command line's process only, before anything holds sys.stderr; child processes inherit
    descriptor 2 as it is.
    """
    try:
        if sys.stderr is None or sys.stderr.fileno() != 2:
            return
        sys.stderr.flush()
        sys.stderr = open(os.dup(2), "w", encoding=sys.stderr.encoding, errors="backslashreplace",  # noqa: SIM115
                          buffering=1)
    except (OSError, ValueError, AttributeError):  # not a real descriptor (a test runner's stream)
        return


def log_unraisable(unraisable: Any) -> None:
    """sys.unraisablehook: an exception in a destructor (h5py's after a failed write, ...) is a debug line, not a traceback."""
    log.debug("ignored in %r: %s: %s", unraisable.object, type(unraisable.exc_value).__name__, unraisable.exc_value)


def log_uncaught(kind: type[BaseException], value: BaseException, tb: Any) -> None:
    """sys.excepthook of the command line: a traceback a library prints from a destructor is a debug line."""
    log.debug("ignored: %s: %s", kind.__name__, value, exc_info=(kind, value, tb))


def heavy_native_modules() -> list[str]:
    """Loaded libraries whose teardown at interpreter exit can crash after an error (TensorFlow, JAX, PyTorch, h5py)."""
    return [m for m in ("tensorflow", "jax", "torch", "h5py") if m in sys.modules]
