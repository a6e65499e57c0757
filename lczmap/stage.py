"""Stage a city: check every source once (the plan), then read the 13-band stack chunk by chunk onto the 10 m base grid.

One function, `read_chunk(plan, rows, cols)`, reads any window of the stack; the lazy dask array of
`stage_city` calls it once per chunk with the plan as a single graph key, prediction calls it eagerly per
block, and `write_stack` calls it per chunk while writing a resumable Zarr store (or a GeoTIFF).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rioxarray  # also registers the .rio accessor on the stack
import xarray as xr
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_coords
from rasterio.features import rasterize

from .config import CityConfig
from .errors import LczmapError
from .grid import CityGrid
from .sources import Source, open_dsm, open_landcover, open_osm, open_sentinel2, open_vhr
from .sources.sentinel2 import SCL_CLOUD

log = logging.getLogger(__name__)

BANDS: tuple[str, ...] = (
    "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12", "osm_buildings", "dsm", "landcover",
)
S2_BANDS = BANDS[:10]
# The bands each optional CityConfig entry fills; a missing entry leaves them NaN.
OPTIONAL_BANDS = {"osm": ("osm_buildings",), "dsm": ("dsm",), "landcover": ("landcover",)}
DEFAULT_CHUNK = 512
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


def plan_stage(config: CityConfig, grid: CityGrid) -> StagePlan:
    """Open and check every source of `config` once (LczmapError on bad input); nothing is read in bulk yet."""
    if config.sentinel2 is None:
        raise LczmapError("no Sentinel-2 input: pass --s2 PATH or set 'sentinel2' in city.yaml (it is required)")
    sources: list[Source] = [open_sentinel2(config.sentinel2, grid.aoi)]
    missing: list[str] = []
    if config.osm is not None or config.osm_online:
        sources.append(open_osm(config.osm, grid.base, online=config.osm_online))
    else:
        missing.append("osm")
    if config.dsm is not None:
        sources.append(open_dsm(config.dsm, config.dtm, grid.aoi))
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
    if missing:
        bands = [b for key in missing for b in OPTIONAL_BANDS[key]]
        log.warning("no %s input: band(s) %s are nodata (the model treats them as missing)", ", ".join(missing), ", ".join(bands))
    positions = tuple(tuple(BANDS.index(b) for b in s.bands) for s in sources)
    return StagePlan(
        name=config.name, base=grid.base, aoi=grid.aoi.geom, sources=tuple(sources), missing=tuple(missing),
        positions=positions, fingerprint=_fingerprint(grid, sources, missing),
    )


def read_chunk(plan: StagePlan, base_rows: slice, base_cols: slice, stats: dict[str, int] | None = None) -> np.ndarray:
    """The (13, h, w) float32 stack of one base-grid window, NaN = nodata; adds pixel counts to `stats` if given."""
    geobox = plan.base[base_rows, base_cols]
    out = np.full((len(BANDS), *geobox.shape), np.nan, dtype="float32")
    extras: dict[str, np.ndarray] | None = {} if stats is not None else None
    for source, pos in zip(plan.sources, plan.positions):
        if pos:
            out[list(pos)] = source.read(geobox, extras)
    if stats is not None:
        _count(plan, geobox, out, extras or {}, stats)
    return out


def stage_city(config: CityConfig, grid: CityGrid, chunk: int = DEFAULT_CHUNK) -> StagedStack:
    """Plan the city's sources, then return the lazy stack: one dask task per chunk, the plan in the graph once."""
    return stack_from_plan(plan_stage(config, grid), chunk)


def stack_from_plan(plan: StagePlan, chunk: int = DEFAULT_CHUNK) -> StagedStack:
    """The dask-backed StagedStack of a plan, chunked `chunk` x `chunk` base pixels."""
    array = blockwise_array(read_chunk, plan, f"lczmap-stage-{plan.fingerprint[:16]}-{chunk}", plan.base.shape, chunk, len(BANDS))
    data = _as_dataarray(array, plan.base)
    return StagedStack(data=data, valid=_valid(data), report=build_report(plan), plan=plan)


def _as_dataarray(array, base: GeoBox) -> xr.DataArray:
    coords = {"band": list(BANDS), **xr_coords(base, crs_coord_name="spatial_ref")}
    return xr.DataArray(array, dims=("band", "y", "x"), coords=coords, name="stack", attrs={"long_name": list(BANDS)})


def _valid(data: xr.DataArray) -> xr.DataArray:
    return data.sel(band=list(S2_BANDS)).notnull().all("band").rename("valid")


def _splits(n: int, size: int) -> list[slice]:
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def blockwise_array(func: Any, plan: Any, name: str, shape: tuple[int, int], block: int, nbands: int):
    """A lazy (nbands, *shape) float32 dask array with one task `func(plan, rows, cols)` per block x block block.

    The plan enters the graph once, as its own key (odc-stac style), so every task shares it instead of a copy.
    """
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    rows, cols = _splits(shape[0], block), _splits(shape[1], block)
    plan_key = f"{name}-plan"
    layer: dict[Any, Any] = {plan_key: plan}
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            layer[(name, 0, i, j)] = (func, plan_key, r, c)
    chunks = ((nbands,), tuple(r.stop - r.start for r in rows), tuple(c.stop - c.start for c in cols))
    return da.Array(HighLevelGraph.from_collections(name, layer, dependencies=()), name, chunks, dtype="float32")


# ---- report ------------------------------------------------------------------------------------------

def _count(plan: StagePlan, geobox: GeoBox, block: np.ndarray, extras: dict[str, np.ndarray], stats: dict[str, int]) -> None:
    """Pixel counts inside the AOI for the report: per-source data, valid S2, SCL data and cloud."""
    aoi = rasterize([plan.aoi], out_shape=geobox.shape, transform=geobox.affine, fill=0, default_value=1, dtype="uint8") == 1
    counts = {"aoi_px": aoi.sum()}
    for source, pos in zip(plan.sources, plan.positions):
        if pos:
            counts[f"{source.key}_px"] = (aoi & np.isfinite(block[list(pos)]).all(axis=0)).sum()
    if "scl" in extras:
        counts["scl_data_px"] = (aoi & (extras["scl"] != 0)).sum()
        counts["scl_cloud_px"] = (aoi & np.isin(extras["scl"], SCL_CLOUD)).sum()
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
            else:
                entry["coverage"] = frac(c.get(f"{source.key}_px", 0), aoi_px)
        sources[source.key] = entry
    for key in plan.missing:
        sources[key] = {"path": None, "status": "missing", "bands": list(OPTIONAL_BANDS[key]),
                        "note": "bands are all NaN (treated as missing by the model)"}
    b = plan.base
    report: dict[str, Any] = {
        "city": plan.name,
        "bands": list(BANDS),
        "grid": {"crs": str(b.crs), "resolution_m": abs(b.resolution.x), "shape": list(b.shape),
                 "bounds": [round(v, 3) for v in b.boundingbox]},
        "sources": sources,
        "missing": list(plan.missing),
    }
    if counts is not None:
        report["aoi_pixels"] = aoi_px
        report["valid_fraction"] = frac(c.get("sentinel2_px", 0), aoi_px)
    return report


def _fingerprint(grid: CityGrid, sources: list[Source], missing: list[str]) -> str:
    """Identifies the inputs of a staging run (grid, sources, file sizes and times), so a resume never mixes inputs."""
    files = sorted({f for s in sources for f in s.files()})
    stamp = [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) if os.path.exists(f) else (f,) for f in files]
    doc = {
        "base": [list(grid.base.shape), list(grid.base.affine)[:6], grid.base.crs.wkt],
        "aoi": grid.aoi.geom.wkt,
        "sources": [s.describe() for s in sources],
        "missing": missing,
        "files": stamp,
        "bands": BANDS,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


# ---- writing and reopening ---------------------------------------------------------------------------

def limit_heap_retention() -> None:
    """Make glibc return freed chunk-sized buffers to the OS (Linux only; a no-op elsewhere).

    By default glibc raises its mmap threshold after the first large free and keeps later chunk arrays in
    per-thread heaps, so the peak RSS of a chunked run creeps up with the number of chunks. A fixed 1 MiB
    threshold sends every chunk-sized array to mmap/munmap, keeping peak memory flat with city size.
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


def stack_format(out: str | Path) -> str:
    """'zarr' or 'tif' from the output name; anything else is refused."""
    suffix = Path(out).suffix.lower()
    if suffix == ".zarr":
        return "zarr"
    if suffix in {".tif", ".tiff"}:
        return "tif"
    raise LczmapError(f"--out {out}: write a Zarr store (name ending .zarr) or a GeoTIFF (.tif)")


def write_stack(staged: StagedStack, out: str | Path, progress: bool = True, workers: int | None = None) -> dict[str, Any]:
    """Write the stack chunk by chunk to `<out>.partial`, then rename to `out`; also `<out>.report.json`.

    Zarr is resumable: chunks whose done marker exists are skipped when the same inputs are staged again.
    Returns the report (with AOI coverage and cloud fraction).
    """
    if staged.plan is None:
        raise LczmapError("only a freshly staged stack can be written (this one was reopened from a file)")
    out = Path(out)
    fmt = stack_format(out)
    if not out.parent.exists():
        raise LczmapError(f"--out {out}: folder {out.parent} does not exist")
    partial = out.with_name(out.name + ".partial")
    plan = staged.plan
    rows = _splits_from(staged.data.chunks[1])
    cols = _splits_from(staged.data.chunks[2])
    run_id = f"{plan.fingerprint}-{staged.data.chunks[1][0]}x{staged.data.chunks[2][0]}"  # chunk markers depend on the chunking
    sink = _ZarrSink(partial, staged.data, run_id) if fmt == "zarr" else _TiffSink(partial, staged.data)
    try:
        todo = [(i, j) for i in range(len(rows)) for j in range(len(cols)) if not sink.done(i, j)]
        if len(todo) < len(rows) * len(cols):
            log.info("resuming %s: %d of %d chunks already written", partial, len(rows) * len(cols) - len(todo), len(rows) * len(cols))
        _run_chunks(plan, rows, cols, todo, sink, progress, workers)
        counts = sink.finish()
    except LczmapError:
        sink.discard()  # a source failed mid-way: the inputs must change, so nothing here can be resumed
        raise
    except BaseException:
        if fmt == "tif":
            sink.discard()
        raise
    report = build_report(plan, counts)
    report["output"] = {"path": str(out), "format": fmt, "chunk": list(staged.data.chunks[1][:1] + staged.data.chunks[2][:1])}
    report_path = out.with_name(out.name + ".report.json")
    tmp = report_path.with_name(report_path.name + ".partial")
    tmp.write_text(json.dumps(report, indent=2, default=_json_default))
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    os.replace(partial, out)
    os.replace(tmp, report_path)
    return report


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


def _run_chunks(plan, rows, cols, todo, sink, progress: bool, workers: int | None) -> None:
    """One task per pending chunk, the plan once in the graph, on dask's threaded scheduler."""
    if not todo:
        return
    import dask
    from dask.diagnostics import ProgressBar

    plan_key = f"lczmap-plan-{plan.fingerprint[:16]}"
    graph: dict[Any, Any] = {plan_key: plan}
    keys = []
    for i, j in todo:
        key = ("lczmap-write", i, j)
        graph[key] = (_stage_block, plan_key, rows[i], cols[j], sink, (i, j))
        keys.append(key)
    with ProgressBar(out=sys.stderr) if progress else _nothing():
        dask.threaded.get(graph, keys, num_workers=workers)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _ZarrSink:
    """A Zarr store with the stack's metadata and coordinates, filled chunk by chunk; a marker per finished chunk."""

    def __init__(self, partial: Path, data: xr.DataArray, fingerprint: str):
        import dask.array as da
        import zarr

        self.partial = partial
        self.markers = partial / _MARKERS
        if partial.exists() and self._stored_fingerprint() != fingerprint:
            log.info("%s holds a run with other inputs; starting over", partial)
            shutil.rmtree(partial)
        if not partial.exists():
            template = data.copy(data=da.zeros(data.shape, chunks=data.chunks, dtype="float32"))
            ds = template.to_dataset(name="stack")
            ds["stack"].encoding = {"chunks": (len(BANDS), data.chunks[1][0], data.chunks[2][0]), "_FillValue": np.nan}
            ds.attrs["lczmap_bands"] = list(BANDS)
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
        import rasterio

        self.partial = partial
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        geobox = data.odc.geobox
        self.dst = rasterio.open(
            partial, "w", driver="GTiff", width=geobox.shape[1], height=geobox.shape[0], count=len(BANDS),
            dtype="float32", crs=geobox.crs.wkt, transform=geobox.affine, nodata=np.nan,
            tiled=True, blockxsize=256, blockysize=256, compress="deflate", predictor=3, BIGTIFF="IF_SAFER",
        )
        self.dst.descriptions = BANDS

    def done(self, i: int, j: int) -> bool:
        return False

    def write(self, ij, r: slice, c: slice, block: np.ndarray, stats: dict[str, int]) -> None:
        from rasterio.windows import Window

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
    if tuple(str(b) for b in data["band"].values) != BANDS:
        raise LczmapError(f"{path}: bands {list(data['band'].values)} are not the staged bands {list(BANDS)}")
    report_path = path.with_name(path.name + ".report.json")
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    return StagedStack(data=data, valid=_valid(data), report=report)
