"""Map many cities in one resumable run: all their blocks share one Dask cluster, each city is written as it finishes.

Pipeline file (YAML; relative paths are relative to the pipeline file)::

    output_dir: out/              # required; created if missing
    model: msmla18-demo           # optional: a model name or folder (default: the shipped model)
    resolution: 100               # optional predict options, for every city: resolution, crs, batch_size,
    crs: EPSG:32652               #   filter, probabilities, nodata_threshold, vhr, composite, mask_snow
    cities:                       # required, a non-empty list
      - {name: seoul, config: cities/seoul/city.yaml}
      - {name: busan, config: cities/busan/city.yaml, resolution: 200}   # per-city options win

`name` (letters, digits, '.', '_', '-') names the outputs; it defaults to the config's folder name.
Unknown keys, duplicate names, an entry without `config` or an option of the wrong type stop the run
before anything is done (one line naming the key). A city whose config is missing or broken, or that
fails while planning, computing or writing, is a failed city: the others go on, the exit code is 1.

Outputs in `output_dir`: per city what `lczmap predict --out <name>.tif` writes (the map, its summary
JSON, quicklook and QGIS style; with `probabilities: true` also `<name>_probabilities.tif`) and its
record `<name>.batch.json` (options, timings, the tif's sha256), committed in the same journal as the
files (lczmap.atomic.committed_with): a kill at any instruction leaves a city's new files with their
record or neither. `manifest.json`, rewritten atomically after each city, lists each city's status
(`done`, `skipped`, `failed` with its error line, `pending` while not finished) and its record.
Running the same pipeline again first completes a commit a kill interrupted, then skips every city
whose record's options are unchanged and whose tif still has the recorded sha256, and redoes the rest,
so a killed run resumes without mapping a finished city again; temporaries a killed run left are removed.
A city task returns its failure as its manifest entry rather than raising it, so a failed city is one
line (`failed NAME: reason`), not a worker's 'Compute Failed' block with a traceback (that goes to -v).

The cluster (lczmap.cluster): a local one of worker processes (`--workers N` of `--threads T` each, or
`--gpus 0,1` for one worker per GPU), or a running one (`--scheduler tcp://host:8786`) whose workers
see the same paths. Every city is a task that a worker maps and writes; a region-sized city is a task
per tile plus its mosaic (lczmap.region).
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

from distributed import as_completed

from . import __version__, region
from .aoi import read_aoi
from .atomic import committed_with, finish_interrupted, write_json_atomic
from .card import DEFAULT_MODEL, load_card, sha256
from .cluster import runner
from .config import (Key, check_bool, check_composite, check_count, check_crs, check_mapping, check_resolution, check_share,
                     check_text, load_city_config, read_yaml_mapping)
from .errors import LczmapError, OutputBusyError
from .locking import output_lock, stale_temporaries
from .outputs import output_paths
from .plan import RegionPlan, RegionSpec, Tile
from .predict import predict_city

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
RECORD_SUFFIX = ".batch.json"  # a finished city's record, beside its tif
TRACEBACK = "traceback"  # the key of a failed city's traceback on its way from the worker to the client's debug log
# How long a city task waits for another process still writing the same city (see map_city) before it fails.
ORPHAN_WAIT_S = 1800.0
# Predict options a pipeline may set globally or per city, checked by the same rules as the command-line options.
OPTION_SCHEMA: dict[str, Key] = {
    "model": Key(check_text, "a model name or folder"),
    "resolution": Key(check_resolution, "output cell size in metres"),
    "crs": Key(check_crs, "output CRS, e.g. EPSG:32652 or EPSG:4326"),
    "batch_size": Key(check_count, "patches per model call"),
    "filter": Key(check_bool, "apply the LCZ Generator's filter"),
    "probabilities": Key(check_bool, "also write the class probabilities"),
    "nodata_threshold": Key(check_share, "largest share of missing pixels in a patch"),
    "vhr": Key(check_bool, "use the VHR stream of a DF4LCZ model"),
    "composite": Key(check_composite, "how several Sentinel-2 products are combined per pixel: median or best"),
    "mask_snow": Key(check_bool, "also treat SCL snow/ice as an invalid Sentinel-2 observation"),
}
PIPELINE_KEYS = {"output_dir", "cities", *OPTION_SCHEMA}
CITY_KEYS = {"name", "config", *OPTION_SCHEMA}
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
    options = check_mapping({k: v for k, v in doc.items() if k in OPTION_SCHEMA}, OPTION_SCHEMA, where)
    model = options.get("model")
    if model is not None and (base / model).is_dir():  # a model folder next to the pipeline file
        options["model"] = str((base / model).resolve())
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


def record_path(output_dir: Path, name: str) -> Path:
    """Where city `name`'s record is committed with its files."""
    return Path(output_dir) / f"{name}{RECORD_SUFFIX}"


def read_record(output_dir: Path, name: str) -> dict[str, Any] | None:
    """The record of city `name` in `output_dir`, or None when it has none."""
    path = record_path(output_dir, name)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        # Committed atomically, so this is a hand-edited file: recomputing the city is the safe reading of it.
        log.warning("%s is not a readable record; city %s will be recomputed", path, name)
        return None
    return doc if isinstance(doc, dict) else None


def settle_city(output_dir: Path, name: str) -> dict[str, Any] | None:
    """Complete what a killed run left of city `name` and return its record (None: it has none, or is being written).

    A commit whose journal was written is finished (then its files and record are in place), and the
    temporaries of dead runs are removed; a city that a task of an earlier run still writes is left alone.
    """
    tif = Path(output_dir) / f"{name}.tif"
    try:
        with output_lock(tif):
            finish_interrupted(tif, [*output_paths(tif).values(), record_path(output_dir, name)])
    except OutputBusyError:
        return None
    return read_record(output_dir, name)


def is_finished(job: CityJob, entry: dict[str, Any] | None, output_dir: Path) -> bool:
    """True when `entry` (the city's record) says it was finished with these options and its tif still has that sha256."""
    if not entry or entry.get("status") not in ("done", "skipped") or entry.get("options") != job.fingerprint():
        return False
    tif = Path(output_dir) / f"{job.name}.tif"
    return tif.is_file() and entry.get("sha256") == sha256(tif)


@contextlib.contextmanager
def _recorded(job: CityJob, tif: Path) -> Iterator[dict[str, Any]]:
    """Commit the city's record with the files written below (`tif`'s set); yields the record, filled at the commit."""
    summary_path = output_paths(tif)["summary"]
    entry: dict[str, Any] = {}

    def make(tmp: dict[Path, Path]) -> dict[str, Any]:
        summary = json.loads(tmp[summary_path.absolute()].read_text())
        entry.update(status="done", output=tif.name, sha256=sha256(tmp[tif.absolute()]), files=summary["outputs"],
                     options=job.fingerprint(), seconds=summary.get("seconds", {}), finished=_now())
        return entry

    with committed_with(summary_path, record_path(tif.parent, job.name), make):
        yield entry


def _failed(job: CityJob, exc: BaseException) -> dict[str, Any]:
    """The manifest entry of a city that failed with `exc` (its traceback rides along for the client's debug log)."""
    return {"status": "failed", "error": _error_text(exc), "options": job.fingerprint(), "finished": _now(),
            TRACEBACK: "".join(traceback.format_exception(exc))}


# The tasks below run on workers and return a failure instead of raising it: a task that raises is logged by
# the worker as 'Compute Failed' with a traceback, and its exception may not survive the trip back intact.

def map_city(job: CityJob, output_dir: Path) -> dict[str, Any]:
    """Map one city where this runs (a worker: its blocks on that worker's threads), write its files and record;
    its manifest entry."""
    tif = Path(output_dir) / f"{job.name}.tif"
    try:
        # A task of an earlier run whose client was stopped may still be writing this city on the cluster (a running
        # task cannot be cancelled): wait for it, then map the city again, as that run's record is not this one's.
        with output_lock(tif, wait=ORPHAN_WAIT_S), _recorded(job, tif) as entry:
            predict_city(load_city_config(job.config, name=job.name), tif, progress=False, **job.options)
    except Exception as exc:
        return _failed(job, exc)
    return entry


def _region_tile(job: CityJob, spec: RegionSpec, tile: Tile) -> dict[str, Any]:
    """One tile of a region-sized city (runs on a worker): its result, or its city's failed entry."""
    try:
        return region.map_tile(spec, tile)
    except Exception as exc:
        return _failed(job, exc)


def _region_done(job: CityJob, plan: RegionPlan, *tiles: dict[str, Any]) -> dict[str, Any]:
    """The mosaic of a region-sized city and its record, once all its tiles are done (runs on a worker); its
    manifest entry (a failed tile's, if one failed). Its inputs are checked here (warnings in its summary), as a city's
    are; its `seconds`: the tiles' summed over the tiles, as they ran side by side."""
    failed = [t for t in tiles if t.get("status") == "failed"]
    if failed:
        return failed[0]
    try:
        with _recorded(job, plan.out) as entry:
            t0 = time.perf_counter()
            guard = region.guard_region(plan)
            seconds = {"plan": plan.plan_seconds + time.perf_counter() - t0, "tiles": sum(t.get("seconds", 0.0) for t in tiles)}
            region.write_mosaic(plan, list(tiles), seconds, guard)
    except Exception as exc:
        return _failed(job, exc)
    return entry


def _submit(client: Any, job: CityJob, output_dir: Path, priority: int) -> Any:
    """Submit one city: a task that maps and writes it, or, for a region-sized AOI, a task per tile and one for the mosaic."""
    config = load_city_config(job.config, name=job.name)
    if not region.needs_region(read_aoi(config.aoi)):
        return client.submit(map_city, job, output_dir, pure=False, priority=priority, key=f"lczmap-city-{job.name}-{os.getpid()}")
    options = {k: v for k, v in job.options.items() if k != "probabilities"}
    if job.options.get("probabilities"):
        log.warning("city %s is mapped as a region: its probabilities file is not written", job.name)
    plan = region.plan_region(config, Path(output_dir) / f"{job.name}.tif", **{"model": DEFAULT_MODEL, **options})
    region.prepare_tiles(plan)
    tiles = [client.submit(_region_tile, job, plan.spec, t, pure=False, priority=priority,
                           key=f"lczmap-tile-{job.name}-{t.id}-{os.getpid()}") for t in plan.tiles]
    return client.submit(_region_done, job, plan, *tiles, pure=False, priority=priority, key=f"lczmap-region-{job.name}-{os.getpid()}")


def run_batch(
    pipeline: Pipeline,
    *,
    workers: int | None = None,
    threads: int | None = None,
    scheduler: str | None = None,
    gpus: Sequence[str] | None = None,
    client: Any = None,
    on_city: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Map every city of `pipeline` on one Dask cluster and return the final manifest.

    The cluster is `client`'s, or the one at `scheduler`, or a new local one (see lczmap.cluster.runner).
    Every city is one task (a region-sized city: one task per tile and one for its mosaic), all submitted
    at once, so small cities never leave workers idle; each task plans, maps and writes its city on the
    worker, and the client keeps only futures and manifest entries, so its memory does not grow with the
    number of cities. `on_city(name, entry)` is called as each city is skipped, fails or is done.
    """
    with contextlib.ExitStack() as stack:
        if scheduler:  # an unreachable cluster stops the run before anything is written
            client = stack.enter_context(runner(client, scheduler=scheduler)).client
        out = pipeline.output_dir
        out.mkdir(parents=True, exist_ok=True)
        stack.enter_context(output_lock(out / MANIFEST))  # one batch per output folder: Error: ... being written by process N
        for stale in stale_temporaries(out / MANIFEST):
            stale.unlink(missing_ok=True)
        manifest: dict[str, Any] = {
            "pipeline": str(pipeline.path), "lczmap_version": __version__, "started": _now(), "cities": {},
        }
        cities = manifest["cities"]

        def record(name: str, entry: dict[str, Any]) -> None:
            trace = entry.pop(TRACEBACK, None)
            if trace:
                log.debug("city %s failed:\n%s", name, trace)
            cities[name] = entry
            write_manifest(out, manifest)
            if on_city is not None:
                on_city(name, entry)

        todo: list[CityJob] = []
        for job in pipeline.cities:
            entry = settle_city(out, job.name)  # the manifest is rebuilt from the records committed with the maps
            if is_finished(job, entry, out):
                record(job.name, {**entry, "status": "skipped"})
                continue
            cities[job.name] = {"status": "pending", "options": job.fingerprint()}
            todo.append(job)
        write_manifest(out, manifest)
        if not todo:
            return manifest

        # a new local cluster only now that there is work for it
        client = stack.enter_context(runner(client, workers, threads, gpus=gpus, cluster=True)).client
        futures: dict[Any, CityJob] = {}
        for rank, job in enumerate(todo):
            # Earlier cities get higher priority, so they finish (and are safe on disk) first, while
            # later cities fill the workers the earlier ones leave idle.
            try:
                futures[_submit(client, job, out, priority=len(todo) - rank)] = job
            except Exception as exc:  # a config or AOI that cannot be read fails this city only
                record(job.name, _failed(job, exc))
        for future in as_completed(list(futures)):
            job = futures.pop(future)
            try:
                record(job.name, future.result())
            except Exception as exc:  # the cluster lost the task (its workers died): this city only
                record(job.name, _failed(job, exc))
            finally:
                future.release()
    return manifest
