"""The settings every lczmap process applies once, the command's and every Dask worker's: GDAL's cache, quiet
TensorFlow, glibc's heap.

Kept apart from lczmap.cluster so that a command which runs no graph applies them without importing Dask.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping

from .console import quiet_library_imports

# Process settings for every lczmap process (client and workers), applied with setdefault so a user's own win.
# GDAL's block cache defaults to 5 % of RAM per process: bounded, so memory stays flat with the map's size;
# decoded Sentinel-2 blocks of a ~30 km window still fit, so each JP2 tile is decoded once per window.
PROCESS_ENV: dict[str, str] = {
    "GDAL_CACHEMAX": "256",
    # TensorFlow's C++ start-up chatter, once per process, would bury the command's own lines
    "TF_CPP_MIN_LOG_LEVEL": "2",
}


def limit_heap_retention() -> None:
    """Make glibc return freed chunk-sized buffers to the OS (Linux only; a no-op elsewhere).

    By default glibc raises its mmap threshold after the first large free and keeps later chunk arrays in
    per-thread heaps, so the peak RSS of a chunked run creeps up with the number of chunks. A fixed 1 MiB
    threshold sends every chunk-sized array to mmap/munmap, keeping peak memory flat with map size.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD (fixed, which also stops the dynamic raise)
        libc.mallopt(-1, 1 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        pass


def configure_process(env: Mapping[str, str] | None = None) -> None:
    """Apply the GDAL and heap settings to this process (idempotent); `env` adds to PROCESS_ENV."""
    for key, value in {**PROCESS_ENV, **(env or {})}.items():
        os.environ.setdefault(key, value)
    limit_heap_retention()
    quiet_library_imports()  # a worker imports TensorFlow without its start-up lines too (below the client's -vv)
