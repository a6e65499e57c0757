"""Stage a city: check every source once (the plan), then read the 13-band stack chunk by chunk onto the 10 m base grid.

One function, `read_chunk(plan, rows, cols)`, reads any window of the stack; the lazy dask array of
`stage_city` calls it once per chunk with the plan as a single graph key, prediction calls it eagerly per
block, and `write_stack` calls it per chunk while writing a resumable Zarr store (or a GeoTIFF).
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import operator
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import rasterio
import rioxarray  # also registers the .rio accessor on the stack
import xarray as xr
import zarr
from affine import Affine
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry
from odc.geo.roi import Tiles  # GeoboxTiles' pixel arithmetic, for a shape without a GeoBox
from odc.geo.xr import xr_coords
from rasterio.features import rasterize
from rasterio.windows import Window
from shapely import wkt

from .atomic import check_outputs, recover_aside, replace_path, write_json_atomic
from .cluster import runner
from .config import CityConfig
from .errors import InputError, LczmapError, OutputError, describe, reading
from .grid import CityGrid
from .locking import output_lock
from .sources import Sentinel2Composite, Source, open_dsm, open_landcover, open_osm, open_products, open_vhr

log = logging.getLogger(__name__)

BANDS: tuple[str, ...] = (
    "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12", "osm_buildings", "dsm", "landcover",
)
S2_BANDS = BANDS[:10]
# Optional extra band (`valid_count=True`): clear Sentinel-2 observations per pixel in the composite.
VALID_COUNT = "valid_count"
# The bands each optional CityConfig entry fills; a missing entry leaves them NaN.
OPTIONAL_BANDS = {"osm": ("osm_buildings",), "dsm": ("dsm",), "landcover": ("landcover",)}
DEFAULT_CHUNK = 512
# Inputs with no usable pixels (README "Inputs with no usable pixels"): an input none of whose pixels sampled over the
# AOI when it is opened is usable is refused; one usable on less than this share of the AOI is warned about (console
# and summary.json `warnings`), since the model sees the rest as missing.
USABLE_WARNING_SHARE = 0.5
_MARKERS = "lczmap_chunks"  # per-chunk done markers inside a partial Zarr store


@dataclass(frozen=True)
class StagePlan:
    """Everything a chunk read needs, checked up front; picklable, so it goes into a dask graph once."""

    name: str
    base: GeoBox
    aoi: Any  # shapely geometry in the grid CRS
    sources: tuple[Source, ...]
    missing: tuple[str, ...]
    positions: tuple[tuple[int, ...], ...]  # stack band indexes filled by each source
    fingerprint: str
    bands: tuple[str, ...] = BANDS  # BANDS, plus VALID_COUNT when asked for
    output: GeoBox | None = None  # the output grid the base grid pads (stored in a Zarr stack for `predict --stack`)
    warnings: tuple[str, ...] = ()  # inputs usable on little of the AOI (`check_usable`)


@dataclass
class StagedStack:
    """The staged inputs of one city: `data` (band, y, x) float32 on the base grid, NaN = nodata."""

    data: xr.DataArray
    valid: xr.DataArray  # (y, x) True where all ten Sentinel-2 bands are valid
    report: dict[str, Any]
    plan: StagePlan | None = field(default=None, repr=False)

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        """(13, h, w) of a base-grid window, eagerly: straight from the sources when staged, else from the store."""
        if self.plan is not None:
            return read_chunk(self.plan, rows, cols)
        return np.asarray(self.data[:, rows, cols].values, dtype="float32")


def plan_stage(config: CityConfig, grid: CityGrid, composite: str = "median", valid_count: bool = False,
               mask_snow: bool = False, needed: tuple[str, ...] = BANDS) -> StagePlan:
    """Open and check every source of `config` once (LczmapError on bad input); nothing is read in bulk yet.

    `composite` (median | best) combines several Sentinel-2 products; `valid_count` adds the band of clear
    observations per pixel; `mask_snow` also treats SCL snow (11) as invalid.
    `needed`: the bands the caller reads (a missing input whose bands it does not read is not warned about).
    """
    sources: list[Source] = [open_products(config.sentinel2, grid, composite=composite, mask_snow=mask_snow)]
    missing: list[str] = []
    if config.osm is not None or config.osm_online:
        sources.append(open_osm(config.osm, grid.base, online=config.osm_online))
    else:
        missing.append("osm")
    if config.dsm is not None:
        sources.append(open_dsm(config.dsm, config.dtm, grid.aoi, config.dsm_height, base=grid.base))
    else:
        if config.dtm is not None:
            log.warning("%s: a DTM without a DSM is ignored", config.dtm)
        missing.append("dsm")
    if config.landcover is not None:
        search = (Path(config.aoi).parent,)  # a relative scheme CSV usually sits beside city.yaml and the AOI
        sources.append(open_landcover(config.landcover, config.landcover_scheme, grid.aoi, grid.base, search))
    else:
        missing.append("landcover")
    if config.vhr is not None:
        sources.append(open_vhr(config.vhr, grid.aoi))
    unread = [key for key in missing if set(OPTIONAL_BANDS[key]) & set(needed)]
    if unread:
        bands = [b for key in unread for b in OPTIONAL_BANDS[key]]
        log.warning("no %s input: band(s) %s are nodata (the model treats them as missing)", ", ".join(unread), ", ".join(bands))
    warnings = check_usable(sources)
    positions = tuple(tuple(BANDS.index(b) for b in s.bands) for s in sources)
    bands = (*BANDS, VALID_COUNT) if valid_count else BANDS
    return StagePlan(
        name=config.name, base=grid.base, aoi=grid.aoi.geom, sources=tuple(sources), missing=tuple(missing),
        positions=positions, fingerprint=_fingerprint(grid, sources, missing, bands), bands=bands, output=grid.output,
        warnings=warnings,
    )


def check_usable(sources: list[Source]) -> tuple[str, ...]:
    """Refuse a source none of whose pixels sampled over the AOI is usable (one line naming its file, before any
    output is written); a warning, also logged, for each usable on less than USABLE_WARNING_SHARE of the AOI."""
    warnings = []
    for source in sources:
        share = source.usable_share
        if share is None or share >= USABLE_WARNING_SHARE:
            continue
        name = _source_name(source)
        if share == 0:
            raise InputError(f"{name}: the {source.key} input has no usable pixel over the AOI (sampled: "
                             f"{source.unusable} everywhere); give one with data over the AOI, or leave it out")
        text = (f"{name}: the {source.key} input is usable on only {share:.0%} of the AOI (sampled; the rest is "
                f"{source.unusable}, missing to the model)")
        log.warning("%s", text)
        warnings.append(text)
    return tuple(warnings)


def _source_name(source: Source) -> str:
    """A source's file for a message: its path, or the first of several and how many more."""
    path = source.describe()["path"]
    if isinstance(path, (list, tuple)):
        return f"{path[0]} (and {len(path) - 1} more)" if len(path) > 1 else str(path[0])
    return str(path)


def read_chunk(plan: StagePlan, base_rows: slice, base_cols: slice, stats: dict[str, int] | None = None,
               seconds: dict[str, float] | None = None) -> np.ndarray:
    """The (bands, h, w) float32 stack of one base-grid window, NaN = nodata; adds pixel counts to `stats` and each
    source's read time to `seconds` (by source key; for profiles) if given.

    Each source window is read once; the Sentinel-2 composite is computed in the same read.
    """
    geobox = plan.base[base_rows, base_cols]
    out = np.full((len(plan.bands), *geobox.shape), np.nan, dtype="float32")
    extras: dict[str, np.ndarray] = {"aoi": _aoi_mask(plan, geobox)} if stats is not None else {}
    for source, pos in zip(plan.sources, plan.positions):
        if pos:
            t0 = time.perf_counter()
            out[list(pos)] = source.read(geobox, extras)
            add_seconds(seconds, source.key, t0)
    if VALID_COUNT in plan.bands:
        out[plan.bands.index(VALID_COUNT)] = extras.get("valid_count", 0)
    if stats is not None:
        _count(plan, out, extras, stats)
    return out


def add_seconds(seconds: dict[str, float] | None, key: str, since: float) -> None:
    """Add the time since perf_counter() value `since` to seconds[key] (profiles of a block's steps); no-op for None."""
    if seconds is not None:
        seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - since


def stage_city(config: CityConfig, grid: CityGrid, chunk: int = DEFAULT_CHUNK, **options: Any) -> StagedStack:
    """Plan the city's sources (`options` go to plan_stage), then return the lazy stack: one dask task per chunk,
    the plan in the graph once."""
    return stack_from_plan(plan_stage(config, grid, **options), chunk)


def stack_from_plan(plan: StagePlan, chunk: int = DEFAULT_CHUNK) -> StagedStack:
    """The dask-backed StagedStack of a plan, chunked `chunk` x `chunk` base pixels."""
    array = blockwise_array(read_chunk, plan, f"lczmap-stage-{plan.fingerprint[:16]}-{chunk}", plan.base.shape, chunk, len(plan.bands))
    data = _as_dataarray(array, plan.base, plan.bands)
    data.attrs.update(stack_metadata(plan))  # written into a Zarr stack with the data, for `predict --stack`
    return StagedStack(data=data, valid=_valid(data), report=build_report(plan), plan=plan)


def _as_dataarray(array, base: GeoBox, bands: tuple[str, ...] = BANDS) -> xr.DataArray:
    coords = {"band": list(bands), **xr_coords(base, crs_coord_name="spatial_ref")}
    return xr.DataArray(array, dims=("band", "y", "x"), coords=coords, name="stack", attrs={"long_name": list(bands)})


def _valid(data: xr.DataArray) -> xr.DataArray:
    return data.sel(band=list(S2_BANDS)).notnull().all("band").rename("valid")


# The seconds by step that the block task running in this context has recorded (see `record_block_seconds`).
_block_seconds: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar("block_seconds", default=None)


def blockwise_array(func: Any, plan: Any, name: str, shape: tuple[int, int], block: int, nbands: int):
    """A lazy (nbands, *shape) float32 dask array with one task `func(plan, rows, cols)` per block x block block.

    The plan enters the graph once, as its own key (odc-stac style), so every task shares it instead of a copy.
    Each task returns its block together with the seconds `func` recorded (`record_block_seconds`): the array
    takes the block, a small task per block the seconds, which `block_seconds` adds up in the same run.
    """
    tiles = Tiles(shape, (block, block))
    plan_key = f"{name}-plan"
    layer: dict[Any, Any] = {plan_key: plan}
    for i in range(tiles.shape.y):
        for j in range(tiles.shape.x):
            timed = (f"{name}-timed", i, j)
            layer[timed] = (_timed_block, func, plan_key, *tiles[i, j])
            layer[(name, 0, i, j)] = (operator.getitem, timed, 0)
            layer[(_seconds_name(name), i, j)] = (operator.getitem, timed, 1)
    return da.Array(HighLevelGraph.from_collections(name, layer, dependencies=()), name, ((nbands,), *tiles.chunks),
                    dtype="float32")


def _seconds_name(name: str) -> str:
    return f"{name}-seconds"


def _timed_block(func: Any, plan: Any, rows: slice, cols: slice) -> tuple[np.ndarray, dict[str, float]]:
    """func(plan, rows, cols) and the seconds it recorded: they travel with the block, from any thread or worker."""
    seconds: dict[str, float] = {}
    token = _block_seconds.set(seconds)
    try:
        return func(plan, rows, cols), seconds
    finally:
        _block_seconds.reset(token)


def record_block_seconds(**seconds: float) -> None:
    """Add `seconds` (by step) to those of the block task of `blockwise_array` running here; no-op outside one."""
    current = _block_seconds.get()
    if current is not None:
        for key, value in seconds.items():
            current[key] = current.get(key, 0.0) + value


def block_seconds(array: Any) -> Delayed | None:
    """The seconds by step that the block tasks of a `blockwise_array` recorded, summed over its blocks (a small
    lazy dict: computed with the array's consumers in one run, its blocks run once); None for another array."""
    if array.ndim != 3 or (_seconds_name(array.name), 0, 0) not in array.dask:
        return None
    keys = [(_seconds_name(array.name), i, j) for i in range(array.numblocks[1]) for j in range(array.numblocks[2])]
    name = f"{_seconds_name(array.name)}-total"
    graph = HighLevelGraph.from_collections(name, {name: (_add_seconds, keys)}, dependencies=[array])
    return Delayed(name, graph)


def _add_seconds(parts: list[dict[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for part in parts:
        for key, value in part.items():
            total[key] = total.get(key, 0.0) + value
    return total


# ---- report ------------------------------------------------------------------------------------------

def _aoi_mask(plan: StagePlan, geobox: GeoBox) -> np.ndarray:
    return rasterize([plan.aoi], out_shape=geobox.shape, transform=geobox.affine, fill=0, default_value=1, dtype="uint8") == 1


def _count(plan: StagePlan, block: np.ndarray, extras: dict[str, np.ndarray], stats: dict[str, int]) -> None:
    """Pixel counts inside the AOI for the report: per-source data, valid S2, S2 data and residual cloud, and the
    pixels each Sentinel-2 product supplied to the composite (`s2_product_<k>_px`, k in the composite's order)."""
    aoi = extras["aoi"]
    counts = {"aoi_px": aoi.sum()}
    for source, pos in zip(plan.sources, plan.positions):
        if pos:
            counts[f"{source.key}_px"] = (aoi & np.isfinite(block[list(pos)]).all(axis=0)).sum()
    if "s2_data" in extras:
        counts["scl_data_px"] = (aoi & extras["s2_data"]).sum()
        counts["scl_cloud_px"] = (aoi & extras["s2_cloud"]).sum()
    for k, px in enumerate(extras.get("s2_contrib", ())):
        counts[f"s2_product_{k}_px"] = px
    for key, value in counts.items():
        stats[key] = stats.get(key, 0) + int(value)


def build_report(plan: StagePlan, counts: dict[str, int] | None = None) -> dict[str, Any]:
    """The staging report: grid, sources (CRS, resolution, how values were made) and, given counts, AOI coverage."""
    frac = (lambda n, d: round(n / d, 4) if d else None) if counts is not None else None
    c = counts or {}
    aoi_px = c.get("aoi_px", 0)
    sources: dict[str, Any] = {}
    for source in plan.sources:
        entry = {**source.describe(), "bands": list(source.bands)}
        if frac is not None and source.bands:
            if source.key == "sentinel2":
                has_scl = "scl_data_px" in c
                entry["coverage"] = frac(c["scl_data_px"] if has_scl else c.get("sentinel2_px", 0), aoi_px)
                entry["cloud_fraction"] = frac(c.get("scl_cloud_px", 0), c.get("scl_data_px", 0)) if has_scl else None
                entry["valid_fraction"] = frac(c.get("sentinel2_px", 0), aoi_px)
                for k, product in enumerate(entry.get("products", [])):
                    product["contributed"] = frac(c.get(f"s2_product_{k}_px", 0), aoi_px)
            else:
                entry["coverage"] = frac(c.get(f"{source.key}_px", 0), aoi_px)
        sources[source.key] = entry
    for key in plan.missing:
        sources[key] = {"path": None, "status": "missing", "bands": list(OPTIONAL_BANDS[key]),
                        "note": "bands are all NaN (treated as missing by the model)"}
    b = plan.base
    report: dict[str, Any] = {
        "city": plan.name,
        "bands": list(plan.bands),
        "grid": {"crs": str(b.crs), "resolution_m": abs(b.resolution.x), "shape": list(b.shape),
                 "bounds": [round(v, 3) for v in b.boundingbox]},
        "sources": sources,
        "missing": list(plan.missing),
    }
    if counts is not None:
        report["aoi_pixels"] = aoi_px
        report["valid_fraction"] = frac(c.get("sentinel2_px", 0), aoi_px)
    return report


def sentinel2_summary(plan: StagePlan) -> dict[str, Any]:
    """For a map's summary: how the Sentinel-2 products were composited and, per product (best first), its date,
    tile, radiometric `scaling` record (lczmap.sources.sentinel2.radiometry), cloud share over the AOI and the
    share of AOI pixels it supplies (estimated on the 60 m planning grid; the staging report counts them exactly)."""
    if isinstance(plan, StackStore):  # mapped from a stack: as recorded when it was staged
        return plan.provenance.get("sentinel2", {})
    s2 = next(s for s in plan.sources if s.key == "sentinel2")
    if not isinstance(s2, Sentinel2Composite):  # a stand-in source (tests wrap the reader): nothing to tell
        return {}
    keep = ("date", "tile", "processing_baseline", "scaling", "cloud_share", "contributed_estimate")
    return {"composite": s2.method, "masked_scl": list(s2.masked),
            "products": [{"name": Path(f["path"]).name, **{k: f[k] for k in keep}} for f in s2.product_facts()],
            "skipped": list(s2.skipped)}


def dsm_summary(plan: StagePlan | StackStore) -> dict[str, Any] | None:
    """For a map's summary: how the DSM band's height above ground was obtained (its `height` record, see
    lczmap.sources.dsm), None without a DSM."""
    if isinstance(plan, StackStore):  # mapped from a stack: as recorded when it was staged
        dsm = plan.provenance.get("sources", {}).get("dsm")
    else:
        dsm = next((s.describe() for s in plan.sources if s.key == "dsm"), None)
    return {"height": dsm["height"]} if dsm and "height" in dsm else None


def _fingerprint(grid: CityGrid, sources: list[Source], missing: list[str], bands: tuple[str, ...] = BANDS) -> str:
    """Identifies the inputs of a staging run (grid, sources, file sizes and times), so a resume never mixes inputs."""
    files = sorted({f for s in sources for f in s.files()})
    stamp = [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) if os.path.exists(f) else (f,) for f in files]
    doc = {
        "base": [list(grid.base.shape), list(grid.base.affine)[:6], grid.base.crs.wkt],
        "aoi": grid.aoi.geom.wkt,
        "sources": [s.describe() for s in sources],
        "missing": missing,
        "files": stamp,
        "bands": bands,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


# ---- writing and reopening ---------------------------------------------------------------------------

def stack_format(out: str | Path) -> str:
    """'zarr' or 'tif' from the output name; anything else is refused."""
    suffix = Path(out).suffix.lower()
    if suffix == ".zarr":
        return "zarr"
    if suffix in {".tif", ".tiff"}:
        return "tif"
    raise LczmapError(f"--out {out}: write a Zarr store (name ending .zarr) or a GeoTIFF (.tif)")


def check_stack_output(out: str | Path) -> str:
    """The stack format of `out` (stack_format), refusing an existing `out` that writing the stack would destroy.

    An existing stack is replaced: a Zarr store of a stack (or an empty folder), or a file for a
    GeoTIFF. Anything else at `out` is the user's (a folder of files, a file where a store goes) and is refused
    with OutputError: replacing it would delete it. A link is replaced itself, never what it points to.
    """
    out = Path(out)
    fmt = stack_format(out)
    if out.is_symlink() or not out.exists():
        return fmt
    if fmt == "tif" and out.is_dir():
        raise OutputError(f"--out {out}: is a folder; name the GeoTIFF stack to write (a new or existing .tif file)")
    if fmt == "zarr" and not (out.is_dir() and (_is_stack_store(out) or not any(out.iterdir()))):
        raise OutputError(f"--out {out}: exists and is not a stack written by `lczmap stage`; replacing it would delete "
                          f"it: choose another --out, or remove it yourself")
    return fmt


def _is_stack_store(path: Path) -> bool:
    """True for a Zarr store of a stack (a Zarr group holding the array 'stack', as `lczmap stage` writes it)."""
    try:
        return "stack" in zarr.open_group(str(path), mode="r")
    except Exception:  # zarr's and json's many errors on a folder that is not a store all mean "not a stack"
        return False


def write_stack(staged: StagedStack, out: str | Path, progress: bool = True, workers: int | None = None,
                threads: int | None = None, scheduler: str | None = None) -> dict[str, Any]:
    """Write the stack chunk by chunk to `<out>.partial`, then put it at `out`; also `<out>.report.json`.

    Zarr is resumable: chunks whose done marker exists are skipped when the same inputs are staged again.
    One run per output at a time (a lock beside it); an existing `out` is replaced crash-safely, so `out`
    only ever holds a complete stack. Chunks run where lczmap.cluster.runner puts them (`workers`
    processes, `threads`, a `scheduler`). Returns the report (with AOI coverage and cloud fraction).
    """
    if staged.plan is None:
        raise LczmapError("only a freshly staged stack can be written (this one was reopened from a file)")
    out = Path(out)
    fmt = check_stack_output(out)
    if not out.parent.exists():
        raise LczmapError(f"--out {out}: folder {out.parent} does not exist")
    if fmt == "tif" and (workers is not None or scheduler is not None):
        raise LczmapError("--workers/--scheduler: a GeoTIFF stack is written by one process; "
                          "write a .zarr store to stage on worker processes, or use --threads")
    inputs = [(f"the city's {s.key} input", f) for s in staged.plan.sources for f in s.files()]
    check_outputs(out, (out, out.with_name(out.name + ".report.json")), inputs, "stack")
    with output_lock(out):
        recover_aside(out)
        check_stack_output(out)  # again under the lock: what is at `out` now is what gets replaced
        return _write_stack_locked(staged, out, fmt, progress, workers, threads, scheduler)


def _write_stack_locked(staged: StagedStack, out: Path, fmt: str, progress: bool, workers: int | None, threads: int | None,
                        scheduler: str | None) -> dict[str, Any]:
    partial = out.with_name(out.name + ".partial")
    plan = staged.plan
    rows = _splits_from(staged.data.chunks[1])
    cols = _splits_from(staged.data.chunks[2])
    run_id = f"{plan.fingerprint}-{staged.data.chunks[1][0]}x{staged.data.chunks[2][0]}"  # chunk markers depend on the chunking
    try:
        sink = _ZarrSink(partial, staged.data, run_id) if fmt == "zarr" else _TiffSink(partial, staged.data)
    except OSError as exc:
        raise LczmapError(f"{partial}: cannot write the stack here ({describe(exc)})") from None
    try:
        todo = [(i, j) for i in range(len(rows)) for j in range(len(cols)) if not sink.done(i, j)]
        if len(todo) < len(rows) * len(cols):
            log.info("resuming %s: %d of %d chunks already written", partial, len(rows) * len(cols) - len(todo), len(rows) * len(cols))
        _run_chunks(plan, rows, cols, todo, sink, progress, workers, threads, scheduler)
        counts = sink.finish()
    except LczmapError:
        sink.discard()  # a source failed mid-way: the inputs must change, so nothing here can be resumed
        raise
    except OSError as exc:  # a full disk or a file-size limit: keep the finished Zarr chunks for a resume
        if fmt == "tif":
            sink.discard()
        raise LczmapError(f"{partial}: writing the stack failed ({describe(exc)})") from None
    except BaseException:
        if fmt == "tif":
            sink.discard()
        raise
    report = build_report(plan, counts)
    report["output"] = {"path": str(out), "format": fmt, "chunk": list(staged.data.chunks[1][:1] + staged.data.chunks[2][:1])}
    report_path = out.with_name(out.name + ".report.json")
    replace_path(partial, out)
    write_json_atomic(report_path, json.loads(json.dumps(report, default=_json_default)))
    return report


def _clear_foreign(partial: Path, want_dir: bool) -> None:
    """Remove a leftover at our temporary name that is not what this sink writes (a file for a store, or the reverse)."""
    if partial.is_symlink() or (partial.exists() and partial.is_dir() != want_dir):
        log.info("%s is not a %s left by lczmap; removing it", partial, "store" if want_dir else "file")
        if partial.is_dir() and not partial.is_symlink():
            shutil.rmtree(partial)
        else:
            partial.unlink()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _splits_from(sizes: tuple[int, ...]) -> list[slice]:
    starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    return [slice(a, b) for a, b in zip(starts[:-1], starts[1:])]


def _stage_block(plan: StagePlan, r: slice, c: slice, sink: Any, ij: tuple[int, int]) -> None:
    stats: dict[str, int] = {}
    sink.write(ij, r, c, read_chunk(plan, r, c, stats), stats)


def _run_chunks(plan, rows, cols, todo, sink, progress: bool, workers: int | None, threads: int | None,
                scheduler: str | None) -> None:
    """One task per pending chunk, the plan once in the graph, where lczmap.cluster.runner puts it."""
    if not todo:
        return
    plan_key = f"lczmap-plan-{plan.fingerprint[:16]}"
    graph: dict[Any, Any] = {plan_key: plan}
    keys = []
    for i, j in todo:
        key = ("lczmap-write", i, j)
        graph[key] = (_stage_block, plan_key, rows[i], cols[j], sink, (i, j))
        keys.append(key)
    with runner(workers=workers, threads=threads, scheduler=scheduler, progress=progress, desc="staging") as run:
        run(graph, keys)


class _ZarrSink:
    """A Zarr store with the stack's metadata and coordinates, filled chunk by chunk; a marker per finished chunk."""

    def __init__(self, partial: Path, data: xr.DataArray, fingerprint: str):
        self.partial = partial
        self.markers = partial / _MARKERS
        _clear_foreign(partial, want_dir=True)
        if partial.exists() and self._stored_fingerprint() != fingerprint:
            log.info("%s holds a run with other inputs; starting over", partial)
            shutil.rmtree(partial)
        if not partial.exists():
            template = data.copy(data=da.zeros(data.shape, chunks=data.chunks, dtype="float32"))
            ds = template.to_dataset(name="stack")
            ds["stack"].encoding = {"chunks": (data.sizes["band"], data.chunks[1][0], data.chunks[2][0]), "_FillValue": np.nan}
            ds.attrs["lczmap_bands"] = [str(b) for b in data["band"].values]
            ds.to_zarr(partial, mode="w", compute=False, consolidated=True, zarr_format=2)
            self.markers.mkdir()
            (self.markers / "plan.json").write_text(json.dumps({"fingerprint": fingerprint}))
        self.array = zarr.open_group(str(partial), mode="r+")["stack"]

    def _stored_fingerprint(self) -> str | None:
        try:
            return json.loads((self.markers / "plan.json").read_text())["fingerprint"]
        except (OSError, ValueError, KeyError):
            return None

    def _marker(self, ij: tuple[int, int]) -> Path:
        return self.markers / f"{ij[0]}_{ij[1]}.json"

    def done(self, i: int, j: int) -> bool:
        return self._marker((i, j)).exists()

    def write(self, ij, r: slice, c: slice, block: np.ndarray, stats: dict[str, int]) -> None:
        self.array[:, r, c] = block
        tmp = self._marker(ij).with_suffix(".tmp")
        tmp.write_text(json.dumps(stats))
        os.replace(tmp, self._marker(ij))  # the marker appears only once the chunk is fully written

    def finish(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for marker in self.markers.glob("*_*.json"):
            for k, v in json.loads(marker.read_text()).items():
                counts[k] = counts.get(k, 0) + v
        shutil.rmtree(self.markers)
        return counts

    def discard(self) -> None:
        shutil.rmtree(self.partial, ignore_errors=True)


class _TiffSink:
    """A tiled float32 GeoTIFF written window by window under a lock (GDAL handles are not thread-safe)."""

    def __init__(self, partial: Path, data: xr.DataArray):
        self.partial = partial
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        _clear_foreign(partial, want_dir=False)
        geobox = data.odc.geobox
        self.dst = rasterio.open(
            partial, "w", driver="GTiff", width=geobox.shape[1], height=geobox.shape[0], count=data.sizes["band"],
            dtype="float32", crs=geobox.crs.wkt, transform=geobox.affine, nodata=np.nan,
            tiled=True, blockxsize=256, blockysize=256, compress="deflate", predictor=3, BIGTIFF="IF_SAFER",
        )
        self.dst.descriptions = tuple(str(b) for b in data["band"].values)

    def done(self, i: int, j: int) -> bool:
        return False

    def write(self, ij, r: slice, c: slice, block: np.ndarray, stats: dict[str, int]) -> None:
        with self.lock:
            self.dst.write(block, window=Window.from_slices(r, c))
            for k, v in stats.items():
                self.counts[k] = self.counts.get(k, 0) + v

    def finish(self) -> dict[str, int]:
        self.dst.close()
        return self.counts

    def discard(self) -> None:
        if not self.dst.closed:
            self.dst.close()
        self.partial.unlink(missing_ok=True)


def open_stack(path: str | Path, chunk: int = DEFAULT_CHUNK) -> StagedStack:
    """Reopen a stack written by `lczmap stage` (Zarr or GeoTIFF) lazily, with its report when present."""
    path = Path(path)
    if not path.exists():
        raise LczmapError(f"{path}: staged stack does not exist")
    fmt = stack_format(path)
    try:
        if fmt == "zarr":
            data = xr.open_zarr(path, consolidated=None)["stack"]
        else:
            data = rioxarray.open_rasterio(path, chunks={"band": -1, "y": chunk, "x": chunk}).rename("stack")
            data = data.assign_coords(band=list(data.attrs.get("long_name") or []))
    except (OSError, KeyError, ValueError) as exc:
        raise LczmapError(f"{path}: not a staged stack ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if tuple(str(b) for b in data["band"].values) not in (BANDS, (*BANDS, VALID_COUNT)):
        raise LczmapError(f"{path}: bands {list(data['band'].values)} are not the staged bands {list(BANDS)}")
    report_path = path.with_name(path.name + ".report.json")
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    return StagedStack(data=data, valid=_valid(data), report=report)


# ---- mapping from a written stack (`lczmap predict --stack`) -------------------------------------------

def stack_metadata(plan: StagePlan) -> dict[str, str]:
    """The grid, AOI, bands and provenance a Zarr stack carries (JSON strings, as Zarr attributes)."""
    grid = {"crs": plan.base.crs.wkt, "base_shape": list(plan.base.shape), "base_transform": list(plan.base.affine)[:6]}
    if plan.output is not None:
        grid.update(output_shape=list(plan.output.shape), output_transform=list(plan.output.affine)[:6])
    provenance = {"city": plan.name, "fingerprint": plan.fingerprint, "missing": list(plan.missing),
                  "sources": {s.key: s.describe() for s in plan.sources}, "sentinel2": sentinel2_summary(plan)}
    return {"lczmap_grid": json.dumps(grid), "lczmap_aoi": plan.aoi.wkt, "lczmap_band_names": json.dumps(list(plan.bands)),
            "lczmap_provenance": json.dumps(provenance, default=_json_default)}


@dataclass(frozen=True)
class StackStore:
    """A Zarr stack written by `lczmap stage`, read window by window like the sources (picklable: a path and facts)."""

    path: str
    bands: tuple[str, ...]
    fingerprint: str  # the staging run's input fingerprint: a map from the stack is keyed like one from the inputs
    missing: tuple[str, ...]
    provenance: dict[str, Any]
    sources: tuple[Source, ...] = ()

    def read(self, base_rows: slice, base_cols: slice) -> np.ndarray:
        """(bands, h, w) float32 of a base-grid window, NaN = nodata."""
        with reading(self.path, "staged stack"):  # a damaged chunk is named by its store
            return np.asarray(_zarr_array(self.path)[:, base_rows, base_cols], dtype="float32")


_zarr_arrays: dict[str, Any] = {}


def _zarr_array(path: str) -> Any:
    """The stack's Zarr array, opened once per process (Zarr reads are thread-safe)."""
    if path not in _zarr_arrays:
        _zarr_arrays[path] = zarr.open_group(path, mode="r")["stack"]
    return _zarr_arrays[path]


def open_stack_store(path: str | Path) -> tuple[StackStore, CityGrid]:
    """The store and grid of a Zarr stack written by `lczmap stage` (LczmapError when it is not one)."""
    path = Path(path)
    if stack_format(path) != "zarr" or not path.is_dir():
        raise LczmapError(f"--stack {path}: not a Zarr stack written by `lczmap stage` (a folder ending .zarr)")
    try:
        attrs = dict(_zarr_array(str(path)).attrs)
        grid = json.loads(attrs["lczmap_grid"])
        bands = tuple(json.loads(attrs["lczmap_band_names"]))
        provenance = json.loads(attrs["lczmap_provenance"])
        aoi = wkt.loads(attrs["lczmap_aoi"])
    except Exception as exc:  # zarr's, json's and shapely's many errors all mean "not a complete stack"
        raise LczmapError(f"--stack {path}: not a complete stack written by `lczmap stage` ({describe(exc)})") from None
    if "output_shape" not in grid:
        raise LczmapError(f"--stack {path}: the stack does not record its output grid; stage it again")
    base = GeoBox(tuple(grid["base_shape"]), Affine(*grid["base_transform"]), grid["crs"])
    output = GeoBox(tuple(grid["output_shape"]), Affine(*grid["output_transform"]), grid["crs"])
    factor = round(output.resolution.x / base.resolution.x)
    halo = (base.shape[0] - output.shape[0] * factor) // 2
    store = StackStore(str(path), bands, provenance["fingerprint"], tuple(provenance["missing"]), provenance)
    return store, CityGrid(aoi=Geometry(aoi, grid["crs"]), output=output, base=base, halo=halo)
