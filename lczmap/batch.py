"""Map many cities in one resumable run: all their blocks share one Dask cluster, each city is written as it finishes.

Pipeline file (YAML; relative paths are relative to the pipeline file)::

    output_dir: out/              # required; created if missing
    model: msmla18-demo           # optional: a model name or folder (default: the shipped model)
    resolution: 100               # optional predict options, for every city:
    crs: EPSG:32652               #   resolution, crs, batch_size, filter, probabilities, nodata_threshold, vhr
    cities:                       # required, a non-empty list
      - {name: seoul, config: cities/seoul/city.yaml}
      - {name: busan, config: cities/busan/city.yaml, resolution: 200}   # per-city options win

`name` (letters, digits, '.', '_', '-') names the outputs; it defaults to the config's folder name.
Unknown keys, duplicate names, an entry without `config` or an option of the wrong type stop the run
before anything is done (one line naming the key). A city whose config is missing or broken, or that
fails while planning, computing or writing, is a failed city: the others go on, the exit code is 1.

Outputs in `output_dir`: per city what `lczmap predict --out <name>.tif` writes (the map, its summary
JSON, quicklook and QGIS style; with `probabilities: true` also `<name>_probabilities.tif`), and
`manifest.json`, rewritten atomically after each city, with each city's status (`done`, `skipped`,
`failed` with its error, `pending` while not finished), timings, options and the tif's sha256.
Running the same pipeline again skips every city whose tif still has the sha256 the manifest recorded
(and whose config and options are unchanged) and redoes the rest, so a killed run resumes; outputs
are renamed into place only when complete, and temporary files a killed run left behind are removed.

The cluster: a local one of single-threaded worker processes (`--workers N`, or `--gpus 0,1` for one
worker per GPU), or a running one (`--scheduler tcp://host:8786`) whose workers see the same paths.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any


from . import __version__
from .atomic import write_json_atomic
from .card import DEFAULT_MODEL, load_card, sha256
from .config import read_yaml_mapping
from .errors import LczmapError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# Predict options a pipeline may set globally or per city: the YAML types they accept, and in words.
OPTION_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "model": ((str,), "a model name or folder"),
    "resolution": ((int, float), "a number of metres"),
    "crs": ((str,), "a CRS string such as EPSG:32652"),
    "batch_size": ((int,), "an integer"),
    "filter": ((bool,), "true or false"),
    "probabilities": ((bool,), "true or false"),
    "nodata_threshold": ((int, float), "a number from 0 to 1"),
    "vhr": ((bool,), "true or false"),
}
PIPELINE_KEYS = {"output_dir", "cities", *OPTION_TYPES}
CITY_KEYS = {"name", "config", *OPTION_TYPES}
# Options that go to write_outputs; the others go to plan_city.
WRITE_OPTIONS = {"filter": "filter", "probabilities": "probabilities_file"}
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class CityJob:
    """One pipeline entry: the city's name, its city.yaml, its merged predict options and its model's weights."""

    name: str
    config: Path
    options: dict[str, Any]
    weights_sha256: str = ""

    def fingerprint(self) -> dict[str, Any]:
        """What decides the output: a finished city is only skipped when this is unchanged."""
        return {"config": str(self.config), **self.options, "weights_sha256": self.weights_sha256}


@dataclass(frozen=True)
class Pipeline:
    """A validated pipeline file."""

    path: Path
    output_dir: Path
    cities: tuple[CityJob, ...]


def _check_options(where: str, doc: dict[str, Any], base: Path) -> dict[str, Any]:
    options = {}
    for key, (types, wanted) in OPTION_TYPES.items():
        if key not in doc:
            continue
        value = doc[key]
        # YAML booleans are ints in Python: refuse `batch_size: true` and `filter: 1` alike.
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            raise LczmapError(f"{where}: '{key}' must be {wanted}, got {value!r}")
        if key == "model" and (base / value).is_dir():  # a model folder next to the pipeline file
            value = str((base / value).resolve())
        options[key] = value
    return options


def load_pipeline(path: str | Path) -> Pipeline:
    """Read and validate a pipeline file; any problem is one LczmapError naming the file and key."""
    path = Path(path)
    doc = read_yaml_mapping(path, "pipeline file", "with 'output_dir' and 'cities'")
    unknown = sorted(set(doc) - PIPELINE_KEYS)
    if unknown:
        raise LczmapError(f"{path}: unknown keys {unknown}; known keys are {sorted(PIPELINE_KEYS)}")
    if not isinstance(doc.get("output_dir"), str) or not doc["output_dir"]:
        raise LczmapError(f"{path}: 'output_dir' (a folder for the maps) is required")
    cities = doc.get("cities")
    if not isinstance(cities, list) or not cities:
        raise LczmapError(f"{path}: 'cities' must be a non-empty list of {{name, config}} entries")
    base = path.parent.resolve()
    defaults = _check_options(str(path), doc, base)
    jobs: list[CityJob] = []
    for i, entry in enumerate(cities, start=1):
        where = f"{path}: city {i}"
        if not isinstance(entry, dict):
            raise LczmapError(f"{where}: each city must be a mapping like {{name: seoul, config: seoul/city.yaml}}")
        unknown = sorted(set(entry) - CITY_KEYS)
        if unknown:
            raise LczmapError(f"{where}: unknown keys {unknown}; known keys are {sorted(CITY_KEYS)}")
        if not isinstance(entry.get("config"), str) or not entry["config"]:
            raise LczmapError(f"{where}: 'config' (the city's city.yaml) is missing")
        config = (base / entry["config"]).resolve()
        name = entry.get("name", config.parent.name)
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise LczmapError(f"{where}: name {name!r} must be letters, digits, '.', '_' or '-' (it names the output files)")
        if name in (job.name for job in jobs):
            raise LczmapError(f"{where}: duplicate city name {name!r}; names must be unique (they name the output files)")
        jobs.append(CityJob(name, config, {**defaults, **_check_options(where, entry, base)}))
    weights: dict[str, str] = {}
    for model in sorted({job.options.get("model", DEFAULT_MODEL) for job in jobs}):
        try:  # a model that is not there would fail every city using it: a pipeline-level problem
            weights[model] = load_card(model).weights_sha256
        except LczmapError as exc:
            raise LczmapError(f"{path}: 'model: {model}': {exc}") from None
    # A retrained model (new weights in the same folder) makes its finished cities stale.
    jobs = [replace(job, weights_sha256=weights[job.options.get("model", DEFAULT_MODEL)]) for job in jobs]
    return Pipeline(path.resolve(), (base / doc["output_dir"]).resolve(), tuple(jobs))


def read_manifest(output_dir: Path) -> dict[str, Any]:
    """The manifest of an earlier run in `output_dir`, or an empty one."""
    path = Path(output_dir) / MANIFEST
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        # Written atomically, so this is a hand-edited file: recomputing is the safe reading of it.
        log.warning("%s is not valid JSON; every city will be recomputed", path)
        return {}
    return doc if isinstance(doc, dict) else {}


def write_manifest(output_dir: Path, manifest: dict[str, Any]) -> None:
    """Rewrite manifest.json atomically (temporary file in the same folder, then os.replace)."""
    manifest["updated"] = _now()
    write_json_atomic(Path(output_dir) / MANIFEST, manifest)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, LczmapError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def is_finished(job: CityJob, entry: dict[str, Any] | None, output_dir: Path) -> bool:
    """True when an earlier run finished this city and its tif still matches the recorded sha256."""
    if not entry or entry.get("status") not in ("done", "skipped") or entry.get("options") != job.fingerprint():
        return False
    tif = Path(output_dir) / f"{job.name}.tif"
    return tif.is_file() and entry.get("sha256") == sha256(tif)


@contextlib.contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None,
                gpus: Sequence[str] | None = None) -> Iterator[Any]:
    """A client of the cluster at `scheduler`, or of a new local cluster of single-threaded worker processes.

    The local cluster has `workers` processes (default: one per core), or, with `gpus` (CUDA device
    ids), one process per GPU that sees only its own GPU (CUDA_VISIBLE_DEVICES).
    """
    from distributed import Client, LocalCluster, Nanny, Scheduler, SpecCluster

    # Importing distributed resets its loggers to INFO; keep its chatter out of the command's output.
    logging.getLogger("distributed").setLevel(max(logging.WARNING, logging.getLogger("lczmap").getEffectiveLevel()))
    if scheduler:
        try:
            client = Client(scheduler)  # waits distributed.comm.timeouts.connect (30 s) for it
        except OSError as exc:
            raise LczmapError(f"--scheduler {scheduler}: cannot connect ({exc})") from None
        with client:
            yield client
        return
    cores = os.cpu_count() or 1
    n = len(gpus) if gpus else workers or cores
    # One Dask thread per process: a worker runs one model call at a time anyway (lczmap.inference), so
    # the parallelism is in processes, and each worker's TensorFlow gets its share of the cores.
    env = {"TF_NUM_INTRAOP_THREADS": str(max(1, cores // n)), "TF_NUM_INTEROP_THREADS": "1"}
    if gpus:
        specs = {f"gpu{g}": {"cls": Nanny, "options": {"nthreads": 1, "env": {**env, "CUDA_VISIBLE_DEVICES": str(g)}}}
                 for g in gpus}
        cluster = SpecCluster(scheduler={"cls": Scheduler, "options": {"dashboard_address": ":8787"}}, workers=specs)
    else:
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, env=env)
    with cluster, Client(cluster) as client:
        log.info("Dask local cluster with %d workers (dashboard %s)", n, client.dashboard_link)
        yield client


def remove_stale_temporaries(output_dir: Path, name: str) -> list[Path]:
    """Delete the temporary files a killed run left for city `name` (predict's `.<file>.<pid>.tmp`)."""
    from .predict import output_paths

    stale = [t for p in output_paths(Path(output_dir) / f"{name}.tif").values() for t in p.parent.glob(f".{p.name}.*.tmp")]
    for tmp in stale:
        log.info("removing %s, left by an interrupted run", tmp)
        tmp.unlink(missing_ok=True)
    return stale


def run_batch(
    pipeline: Pipeline,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    gpus: Sequence[str] | None = None,
    client: Any = None,
    on_city: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Map every city of `pipeline` on one Dask cluster and return the final manifest.

    The cluster is `client`'s, or the one at `scheduler`, or a new local one (see `dask_client`).
    Every city is planned first, then all cities' block graphs are submitted at once, so small cities
    never leave workers idle; each city is written on this machine as soon as its blocks are done.
    `on_city(name, entry)` is called as each city is skipped, fails or is done.
    """
    from distributed import as_completed

    from .config import load_city_config
    from .predict import block_tasks, plan_city, write_outputs

    with contextlib.ExitStack() as stack:
        if client is None and scheduler:  # an unreachable cluster stops the run before anything is written
            client = stack.enter_context(dask_client(scheduler=scheduler))
        out = pipeline.output_dir
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(f".{MANIFEST}.*.tmp"):
            stale.unlink(missing_ok=True)
        previous = read_manifest(out).get("cities", {})
        manifest: dict[str, Any] = {
            "pipeline": str(pipeline.path), "lczmap_version": __version__, "started": _now(), "cities": {},
        }
        cities = manifest["cities"]

        def record(name: str, entry: dict[str, Any]) -> None:
            cities[name] = entry
            write_manifest(out, manifest)
            if on_city is not None:
                on_city(name, entry)

        def fail(job: CityJob, exc: BaseException, seconds: dict[str, float]) -> None:
            log.debug("city %s failed:\n%s", job.name, "".join(traceback.format_exception(exc)))
            record(job.name, {"status": "failed", "error": _error_text(exc), "options": job.fingerprint(),
                              "seconds": seconds, "finished": _now()})

        plans: dict[str, tuple[CityJob, Any]] = {}
        for job in pipeline.cities:
            entry = previous.get(job.name)
            if is_finished(job, entry, out):
                record(job.name, {**entry, "status": "skipped"})
                continue
            remove_stale_temporaries(out, job.name)
            t0 = time.perf_counter()
            plan_options = {k: v for k, v in job.options.items() if k not in WRITE_OPTIONS}
            try:
                plans[job.name] = (job, plan_city(load_city_config(job.config, name=job.name), **plan_options))
            except Exception as exc:  # any planning error fails this city only; the batch goes on
                fail(job, exc, {"plan": round(time.perf_counter() - t0, 3)})
                continue
            cities[job.name] = {"status": "pending", "options": job.fingerprint()}
        write_manifest(out, manifest)
        if not plans:
            return manifest

        if client is None:
            client = stack.enter_context(dask_client(workers, gpus=gpus))
        submitted = time.perf_counter()
        futures = {}
        for rank, (name, (_, plan)) in enumerate(plans.items()):
            # Earlier cities get higher priority, so they finish (and are safe on disk) first, while
            # later cities' blocks fill the workers the earlier ones leave idle.
            futures[client.compute(block_tasks(plan), priority=len(plans) - rank)] = name
        for future in as_completed(list(futures)):
            name = futures.pop(future)
            job, plan = plans.pop(name)
            seconds = {"plan": round(plan.plan_seconds, 3), "staging+inference": round(time.perf_counter() - submitted, 3)}
            t0 = time.perf_counter()
            tif = out / f"{name}.tif"
            try:
                write_options = {WRITE_OPTIONS[k]: v for k, v in job.options.items() if k in WRITE_OPTIONS}
                summary = write_outputs(plan, future.result(), tif, seconds=dict(seconds), **write_options)
            except Exception as exc:  # a block that failed for good, or a failed write, fails this city only
                seconds["write"] = round(time.perf_counter() - t0, 3)
                fail(job, exc, seconds)
                continue
            finally:
                future.release()  # its probabilities are on this machine now (or lost): free the cluster's copy
            seconds["write"] = round(time.perf_counter() - t0, 3)
            record(name, {
                "status": "done", "output": tif.name, "sha256": sha256(tif), "files": summary["outputs"],
                "options": job.fingerprint(), "seconds": seconds, "finished": _now(),
            })
    return manifest
