"""Where a Dask graph runs: a cluster factory (`dask_client`) and the one front door (`runner`).

Every command means the same by its options: `--workers N` is a local cluster of N worker processes,
`--threads T` the threads of each (or of the threaded scheduler when there is no cluster), and
`--scheduler ADDRESS` a running cluster. `runner(...)` turns those options (or a client already made)
into a `Runner` that computes graphs there: without any of them on the threaded scheduler of this
process; inside a task on a Dask worker (a region's tile, a batch's city) on that worker's threads, so
the cluster spreads tiles and cities and a worker holds one task's blocks per thread. GDAL and heap
settings (lczmap.process) are applied once per process: by the command line (every command), and on workers by
a worker plugin.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dask
from dask.threaded import get as threaded_get
from distributed import Client, LocalCluster, Nanny, Scheduler, SpecCluster, get_worker
from distributed import progress as distributed_progress
from distributed.diagnostics.plugin import WorkerPlugin
from tqdm.dask import TqdmCallback

from .errors import LczmapError
from .process import PROCESS_ENV, configure_process

log = logging.getLogger(__name__)


class ProcessSettings(WorkerPlugin):
    """A Dask worker plugin: `configure_process` in every worker, including ones that join later or restart."""

    name = "lczmap-process-settings"

    def __init__(self, env: Mapping[str, str] | None = None):
        self.env = dict(env or {})

    def setup(self, worker: Any) -> None:
        configure_process(self.env)


def in_worker() -> bool:
    """True inside a task running on a dask.distributed worker."""
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
            client.register_plugin(ProcessSettings())
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
        client.register_plugin(ProcessSettings())
        log.info("Dask local cluster of %d worker processes x %d threads (dashboard %s)", n, nthreads, client.dashboard_link)
        yield client


@dataclass(frozen=True)
class Runner:
    """Computes dask graphs where a command's options put them: on `client`'s cluster, else on this process's
    threaded scheduler with `threads` threads (default: one per core), or inside a worker task on that worker's threads.

    Called with a dask collection (its computed value comes back) or a raw graph dict and its `keys`; with
    `progress`, a bar named `desc` shows the tasks done.
    """

    client: Any = None
    threads: int | None = None
    progress: bool = False
    desc: str = "tasks"

    def __call__(self, collection: Any, keys: Sequence[Any] | None = None) -> Any:
        if self.client is not None:
            return _on_client(self.client, collection, keys, self.progress)
        threads, progress = self.threads, self.progress
        if in_worker():
            # A task's own sub-graph (a tile's or a city's blocks) runs on that worker's threads: the cluster
            # spreads the tasks, and a worker never holds more than its threads' share of blocks.
            threads, progress = get_worker().state.nthreads, False
        with _tqdm(progress, self.desc):
            if isinstance(collection, Mapping):
                return threaded_get(dict(collection), list(keys or ()), num_workers=threads or os.cpu_count())
            return dask.compute(collection, scheduler="threads", num_workers=threads or os.cpu_count())[0]


@contextlib.contextmanager
def runner(client: Any = None, workers: int | None = None, threads: int | None = None, scheduler: str | None = None,
           gpus: Sequence[str] | None = None, *, progress: bool = False, desc: str = "tasks",
           cluster: bool = False) -> Iterator[Runner]:
    """The one front door to where graphs run: `client`'s cluster if given; else a new one from `workers`, `gpus`
    or `scheduler` (see `dask_client`; with `cluster`, a new local one even without them, for commands that
    submit tasks), closed when the block ends; else this process's threads (or a worker's, inside a task)."""
    if client is None and (cluster or workers is not None or scheduler is not None or gpus is not None):
        with dask_client(workers, scheduler, gpus=gpus, threads=threads) as made:
            yield Runner(made, threads, progress, desc)
    else:
        yield Runner(client, threads, progress, desc)


def _on_client(client: Any, array_or_graph: Any, keys: Sequence[Any] | None, progress: bool) -> Any:
    if isinstance(array_or_graph, Mapping):
        return client.get(dict(array_or_graph), list(keys or ()))
    future = client.compute(array_or_graph)
    try:
        if progress:
            distributed_progress(future)
        return future.result()
    finally:
        future.release()


def _tqdm(progress: bool, desc: str):
    if not progress:
        return contextlib.nullcontext()
    return TqdmCallback(desc=desc, unit="task", leave=False)
