"""Where a Dask graph runs: one process set-up, one cluster factory (`dask_client`) and one runner (`run_graph`).

Every command means the same by its options: `--workers N` is a local cluster of N worker processes,
`--threads T` the threads of each (or of the threaded scheduler when there is no cluster), and
`--scheduler ADDRESS` a running cluster. Without any of them a graph runs on the threaded scheduler of
this process; a graph started inside a task on a Dask worker (a region's tile, a batch's city) runs on
that worker's threads, so the cluster spreads tiles and cities and a worker holds one task's blocks per
thread. GDAL and heap settings are applied once per process: by the command line (every command), and on
workers by a worker plugin.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from .errors import LczmapError

log = logging.getLogger(__name__)

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
    import ctypes

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


@functools.cache
def _process_settings_class() -> type:
    from distributed.diagnostics.plugin import WorkerPlugin

    class ProcessSettings(WorkerPlugin):
        """A Dask worker plugin: `configure_process` in every worker, including ones that join later or restart."""

        name = "lczmap-process-settings"

        def __init__(self, env: Mapping[str, str] | None = None):
            self.env = dict(env or {})

        def setup(self, worker: Any) -> None:
            configure_process(self.env)

    ProcessSettings.__module__, ProcessSettings.__qualname__ = __name__, "ProcessSettings"  # picklable by name
    return ProcessSettings


def __getattr__(name: str) -> Any:
    # The plugin class needs distributed (seconds to import), which commands that only apply the process
    # settings should not pay for: it is made on first use, as lczmap.cluster.ProcessSettings.
    if name == "ProcessSettings":
        return _process_settings_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def in_worker() -> bool:
    """True inside a task running on a dask.distributed worker."""
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


def check_cluster_options(workers: int | None, threads: int | None, scheduler: str | None,
                          gpus: Sequence[str] | None = None) -> None:
    """Refuse combinations that name two ways of getting workers."""
    if sum(x is not None for x in (workers, gpus, scheduler)) > 1:
        names = [n for n, v in (("--workers", workers), ("--gpus", gpus), ("--scheduler", scheduler)) if v is not None]
        raise LczmapError(f"{' and '.join(names)} exclude each other: pick one way to get workers")
    if threads is not None and scheduler is not None:
        raise LczmapError("--threads with --scheduler: a running cluster's workers already have their threads")


@contextlib.contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None, gpus: Sequence[str] | None = None,
                threads: int | None = None) -> Iterator[Any]:
    """A client of the cluster at `scheduler`, or of a new local cluster of worker processes.

    The local cluster has `workers` processes (default: one per core) of `threads` threads each (default 1),
    or, with `gpus` (CUDA device ids), one process per GPU that sees only its own GPU (CUDA_VISIBLE_DEVICES).
    Every worker gets the process settings (`configure_process`) through a worker plugin.
    """
    from distributed import Client, LocalCluster, Nanny, Scheduler, SpecCluster

    check_cluster_options(workers, threads, scheduler, gpus)
    # Importing distributed resets its loggers to INFO; keep its chatter out of the command's output.
    logging.getLogger("distributed").setLevel(max(logging.WARNING, logging.getLogger("lczmap").getEffectiveLevel()))
    configure_process()
    if scheduler:
        try:
            client = Client(scheduler)  # waits distributed.comm.timeouts.connect (30 s) for it
        except OSError as exc:
            raise LczmapError(f"--scheduler {scheduler}: cannot connect ({exc})") from None
        with client:
            client.register_plugin(_process_settings_class()())
            yield client
        return
    cores = os.cpu_count() or 1
    n = len(gpus) if gpus else workers or cores
    nthreads = threads or 1
    # One model call at a time per process (lczmap.inference), so the parallelism is in processes; each
    # worker's TensorFlow gets its share of the cores (unless this environment sets its own), and the
    # process settings are in place at start-up.
    env = {**PROCESS_ENV, "TF_NUM_INTRAOP_THREADS": os.environ.get("TF_NUM_INTRAOP_THREADS", str(max(1, cores // n))),
           "TF_NUM_INTEROP_THREADS": "1"}
    if gpus:
        specs = {f"gpu{g}": {"cls": Nanny, "options": {"nthreads": nthreads, "env": {**env, "CUDA_VISIBLE_DEVICES": str(g)}}}
                 for g in gpus}
        cluster = SpecCluster(scheduler={"cls": Scheduler, "options": {"dashboard_address": ":8787"}}, workers=specs)
    else:
        cluster = LocalCluster(n_workers=n, threads_per_worker=nthreads, processes=True, env=env)
    with cluster, Client(cluster) as client:
        client.register_plugin(_process_settings_class()())
        log.info("Dask local cluster of %d worker processes x %d threads (dashboard %s)", n, nthreads, client.dashboard_link)
        yield client


def run_graph(array_or_graph: Any, keys: Sequence[Any] | None = None, *, client: Any = None, workers: int | None = None,
              threads: int | None = None, scheduler: str | None = None, progress: bool = False,
              desc: str = "tasks") -> Any:
    """Compute a dask collection (or run a raw graph dict for `keys`) and return its result.

    Where: on `client`'s cluster; on a new one from `workers`/`scheduler` (see `dask_client`); else on
    this process's threaded scheduler with `threads` threads (default: one per core; inside a worker task,
    the worker's threads).
    """
    if client is None and (workers is not None or scheduler is not None):
        with dask_client(workers, scheduler, threads=threads) as c:
            return run_graph(array_or_graph, keys, client=c, progress=progress, desc=desc)
    if client is None and in_worker():
        # A task's own sub-graph (a tile's or a city's blocks) runs on that worker's threads: the cluster
        # spreads the tasks, and a worker never holds more than its threads' share of blocks.
        from distributed import get_worker

        threads, progress = get_worker().state.nthreads, False
    elif client is not None:
        return _on_client(client, array_or_graph, keys, progress)
    import dask

    with _tqdm(progress, desc):
        if isinstance(array_or_graph, Mapping):
            return dask.threaded.get(dict(array_or_graph), list(keys or ()), num_workers=threads or os.cpu_count())
        return dask.compute(array_or_graph, scheduler="threads", num_workers=threads or os.cpu_count())[0]


def graph_runner(client: Any, threads: int | None, progress: bool, desc: str = "tasks") -> Callable[[Any], Any]:
    """Computes one dask object where `run_graph` puts it (`client`'s cluster, or local threads)."""
    return lambda task: run_graph(task, client=client, threads=threads, progress=progress, desc=desc)


def _on_client(client: Any, array_or_graph: Any, keys: Sequence[Any] | None, progress: bool) -> Any:
    if isinstance(array_or_graph, Mapping):
        return client.get(dict(array_or_graph), list(keys or ()))
    future = client.compute(array_or_graph)
    try:
        if progress:
            from distributed import progress as distributed_progress

            distributed_progress(future)
        return future.result()
    finally:
        future.release()


def _tqdm(progress: bool, desc: str):
    if not progress:
        return contextlib.nullcontext()
    from tqdm.dask import TqdmCallback

    return TqdmCallback(desc=desc, unit="task", leave=False)
