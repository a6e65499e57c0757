"""Map a region of any size as tiles on a fixed grid, one UTM zone each, and deliver one mosaic (or per-zone VRTs).

The region is cut per UTM zone (6-degree strips, north and south of the equator apart) into square tiles
of `tile_km` on a grid fixed in the zone's coordinates (tile (i, j) spans [i T, (i+1) T) x [j T, (j+1) T)
metres), so a tile's place never depends on the AOI. Each tile is mapped like a city, in its zone's grid,
over its core plus a halo of the largest filter radius: the Gaussian filter of every core cell then sees
exactly the cells it sees in one grid, so tiles meet without seams. A tile's core is kept as a COG in
`<out>.tiles/<EPSG>/`; finished tiles are the resumable units (a rerun after a kill maps only the rest).
The mosaic is written in EPSG:4326 at the global LCZ map's 0.000898 degrees (or `--crs`) block by block,
or, with `--tiles`, one VRT per zone over its tile COGs.

Tasks run on the threaded scheduler here, or as one task per tile on a Dask cluster (the client holds
only the tile list and small results; tiles are written by the workers).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from odc.geo.geom import Geometry

from .atomic import write_json_atomic
from .config import CityConfig
from .errors import LczmapError
from .grid import to_lonlat

log = logging.getLogger(__name__)

# A single UTM grid serves AOIs up to this width; wider ones are mapped as a region of tiles.
REGION_EXTENT_M = 400_000
DEFAULT_TILE_KM = 32.0
# Pixel size of the global LCZ map (Demuzere et al. 2022), about 100 m at the equator.
GLOBAL_LCZ_DEGREES = 0.000898315284120171
# The filter's reach: the largest kernel radius of FILTER_RADIUS_SIGMA_M (LCZ 8 and 10), in metres.
FILTER_REACH_M = 500.0
STATE_FILE = "region.json"
BANDS = ("lcz", "lczFilter", "lczProbability")


@dataclass(frozen=True)
class Tile:
    """One resumable unit: its core (the cells it delivers) and the AOI it is mapped over (core + halo)."""

    id: str
    epsg: int
    core_wkt: str  # core polygon in the zone CRS: the tile square, clipped to its zone strip (with a one-cell overlap)
    aoi_wkt: str  # the region's AOI within the core's halo, in the zone CRS

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    def delivered(self) -> Any:
        """The part of the AOI this tile delivers (its core within the AOI), in the zone CRS."""
        return shapely.from_wkt(self.core_wkt).intersection(shapely.from_wkt(self.aoi_wkt))


@dataclass(frozen=True)
class RegionSpec:
    """What every tile task needs: the inputs, the predict options and where tiles go (pure data, picklable)."""

    config: CityConfig
    work: Path
    model: str
    resolution: float
    filter: bool
    options: dict[str, Any]  # the other predict_city options (batch_size, nodata_threshold, vhr, ...)

    def tile_path(self, tile: Tile) -> Path:
        return self.work / str(tile.epsg) / f"{tile.id}.tif"


@dataclass(frozen=True)
class RegionPlan:
    spec: RegionSpec
    out: Path
    crs: str  # the mosaic's CRS
    tiles: tuple[Tile, ...]
    tiles_output: bool
    tile_km: float


def needs_region(aoi: Geometry, tile_km: float | None = None) -> bool:
    """True when the AOI is mapped as a region: wider than REGION_EXTENT_M (in its own UTM zone), or tiles are asked for."""
    if tile_km is not None:
        return True
    from .grid import utm_crs

    crs = utm_crs(aoi)
    minx, miny, maxx, maxy = to_lonlat(aoi).to_crs(crs).boundingbox
    return max(maxx - minx, maxy - miny) > REGION_EXTENT_M


def zone_parts(aoi: Geometry) -> list[tuple[int, Any, Any]]:
    """(EPSG, the AOI's part in the zone, the zone strip) per UTM zone and hemisphere, all in lon/lat (shapely)."""
    ll = to_lonlat(aoi).geom
    minx, miny, maxx, maxy = ll.bounds
    parts = []
    for k in range(math.floor((minx + 180) / 6), math.floor((maxx + 180) / 6) + 1):
        west = -180 + 6 * k
        zone = k % 60 + 1
        for south, north, base in ((0.0, 84.0, 32600), (-80.0, 0.0, 32700)):
            strip = shapely.box(west, south, west + 6, north)
            part = ll.intersection(strip)
            if not part.is_empty and part.area > 0:
                parts.append((base + zone, part, strip))
    if not parts:
        raise LczmapError("the AOI lies outside the UTM zones (80 S to 84 N); give a projected --crs for polar regions")
    return parts


def _to_zone(geom: Any, epsg: int) -> Any:
    """A lon/lat shapely geometry in the zone's CRS; edges densified first, as meridians and parallels curve in UTM."""
    return Geometry(shapely.segmentize(geom, 0.01), "EPSG:4326").to_crs(f"EPSG:{epsg}").geom


def _to_lonlat(geom: Any, epsg: int) -> Any:
    return to_lonlat(Geometry(shapely.segmentize(geom, 500.0), f"EPSG:{epsg}")).geom


def plan_tiles(aoi: Geometry, tile_km: float = DEFAULT_TILE_KM, resolution: float = 100.0) -> list[Tile]:
    """The region's tiles on the fixed per-zone grid: every tile square that holds part of the AOI."""
    size = round(tile_km * 1000 / resolution) * resolution  # whole output cells, so tile edges are cell edges
    if size <= 0:
        raise LczmapError(f"--tile-km {tile_km:g}: must be at least one {resolution:g} m cell")
    halo = math.ceil(FILTER_REACH_M / resolution) * resolution
    ll = to_lonlat(aoi).geom
    tiles = []
    for epsg, part, strip in zone_parts(aoi):
        part_utm = _to_zone(part, epsg)
        # One cell of overlap across the zone edge, so the mosaic has no gap where the meridian cuts cells.
        strip_utm = _to_zone(strip, epsg).buffer(resolution, join_style="mitre")
        minx, miny, maxx, maxy = part_utm.bounds
        for i in range(math.floor(minx / size), math.ceil(maxx / size)):
            for j in range(math.floor(miny / size), math.ceil(maxy / size)):
                square = shapely.box(i * size, j * size, (i + 1) * size, (j + 1) * size)
                if not square.intersects(part_utm) or square.intersection(part_utm).area == 0:
                    continue
                core = square.intersection(strip_utm)
                reach = shapely.box(*core.buffer(halo, join_style="mitre").bounds)
                tile_aoi = _to_zone(ll.intersection(_to_lonlat(reach, epsg)), epsg).intersection(reach)
                if tile_aoi.is_empty or tile_aoi.area == 0:
                    continue
                tiles.append(Tile(id=f"{epsg}_{i:+05d}_{j:+05d}", epsg=epsg, core_wkt=core.wkt, aoi_wkt=tile_aoi.wkt))
    return tiles


def output_crs(crs: str | None) -> str:
    """The mosaic's CRS: EPSG:4326 by default, else `crs` as PROJ knows it."""
    from odc.geo.crs import CRS

    try:
        return str(CRS(crs or "EPSG:4326"))
    except Exception:  # pyproj's many error types; one line for the user
        raise LczmapError(f"--crs {crs}: not a CRS that PROJ knows (try EPSG:4326 or EPSG:3035)") from None


def plan_region(config: CityConfig, out: str | Path, *, model: str, resolution: float = 100.0, crs: str | None = None,
                tile_km: float | None = None, tiles_output: bool = False, filter: bool = True, **options: Any) -> RegionPlan:
    """Check the options, cut the AOI into tiles and prepare `<out>.tiles/` (kept only while its inputs are unchanged).

    `options` go to every tile's predict_city (batch_size, nodata_threshold, vhr, ...).
    """
    from .aoi import read_aoi
    from .card import load_card

    out = Path(out)
    _check_out(out)
    card = load_card(model)  # an unknown model stops the run before any tile is planned
    tile_km = DEFAULT_TILE_KM if tile_km is None else float(tile_km)
    mosaic_crs = output_crs(crs)
    tiles = plan_tiles(read_aoi(config.aoi), tile_km, resolution)
    work = out.with_name(f"{out.stem}.tiles")
    spec = RegionSpec(config=config, work=work, model=str(model), resolution=float(resolution), filter=bool(filter),
                      options=dict(options))
    state = {"config": {k: str(v) for k, v in asdict(config).items()}, "model": card.name,
             "weights_sha256": card.weights_sha256, "resolution": spec.resolution, "tile_km": tile_km,
             "filter": spec.filter, "options": {k: str(v) for k, v in sorted(options.items())},
             "inputs": _input_stamps(config)}
    _prepare_work(work, state)
    return RegionPlan(spec=spec, out=out, crs=mosaic_crs, tiles=tuple(tiles), tiles_output=tiles_output, tile_km=tile_km)


def _check_out(out: Path) -> None:
    if out.is_dir():
        raise LczmapError(f"--out {out}: is a folder; name the GeoTIFF to write, e.g. {out / 'region.tif'}")
    if not out.parent.is_dir():
        raise LczmapError(f"--out {out}: folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise LczmapError(f"--out {out}: folder {out.parent} is not writable")
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise LczmapError(f"--out {out}: the map is a GeoTIFF; give a name ending in .tif")


def _input_stamps(config: CityConfig) -> list[Any]:
    """Size and time of every input path, so a rerun with changed inputs starts over instead of mixing tiles."""
    paths: list[Path] = []
    for value in asdict(config).values():
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, Path):
                paths.append(v)
    return [(str(p), p.stat().st_size, p.stat().st_mtime_ns) if p.exists() else (str(p),) for p in sorted(paths)]


def _prepare_work(work: Path, state: dict[str, Any]) -> None:
    state_path = work / STATE_FILE
    if work.exists():
        try:
            same = json.loads(state_path.read_text()) == json.loads(json.dumps(state))
        except (OSError, ValueError):
            same = False
        if not same:
            log.info("%s holds tiles of other inputs or options; starting over", work)
            shutil.rmtree(work)
    work.mkdir(exist_ok=True)
    for stale in work.rglob(".*.tmp"):  # temporaries of a killed run; finished tiles have their final names
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)
    if not state_path.exists():
        write_json_atomic(state_path, state)


# ---- one tile (runs on a worker, or here) ------------------------------------------------------------

def map_tile(spec: RegionSpec, tile: Tile) -> dict[str, Any]:
    """Map one tile over core + halo, keep its core as a COG at spec.tile_path(tile); returns its cell counts.

    Idempotent: a tile whose COG exists is not redone.
    """
    import rasterio
    from rasterio.features import geometry_mask

    path = spec.tile_path(tile)
    if path.exists():
        return {"id": tile.id, "skipped": True, **_tile_counts(path)}
    from .predict import output_paths, predict_city

    t0 = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.parent / f".{tile.id}.{os.getpid()}.tmp"
    scratch.mkdir(exist_ok=True)
    try:
        aoi_file = scratch / "aoi.geojson"
        aoi_file.write_text(json.dumps({"type": "FeatureCollection",
                                        "crs": {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{tile.epsg}"}},
                                        "features": [{"type": "Feature", "properties": {},
                                                      "geometry": shapely.geometry.mapping(shapely.from_wkt(tile.aoi_wkt))}]}))
        config = replace(spec.config, aoi=aoi_file, name=tile.id)
        full = scratch / "tile.tif"
        predict_city(config, full, model=spec.model, resolution=spec.resolution, crs=tile.crs, filter=spec.filter,
                     progress=False, **spec.options)
        # The LCZ Generator's three bands (lcz, lczFilter, lczProbability): a file of their own beside a one-band map.
        three = output_paths(full).get("lcz3", full)
        core = shapely.from_wkt(tile.core_wkt)
        with rasterio.open(three if three.exists() else full) as src:
            window = _outer_window(src.window(*tile.delivered().bounds))
            data = src.read(window=window, boundless=True, fill_value=0)
            transform = src.window_transform(window)
            outside = geometry_mask([core], out_shape=data.shape[1:], transform=transform)
            data[:, outside] = 0
            profile = src.profile | {"height": data.shape[1], "width": data.shape[2], "transform": transform}
            descriptions, tags = src.descriptions, src.tags()
        _write_cog(path, data, profile, descriptions, tags)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"id": tile.id, "skipped": False, "seconds": round(time.perf_counter() - t0, 3), **_tile_counts(path)}


def _outer_window(exact: Any) -> Any:
    """The whole-pixel window that holds a fractional one (rasterio Window)."""
    from rasterio.windows import Window

    col, row = math.floor(exact.col_off + 1e-6), math.floor(exact.row_off + 1e-6)
    return Window(col, row, math.ceil(exact.col_off + exact.width - 1e-6) - col,
                  math.ceil(exact.row_off + exact.height - 1e-6) - row)


def _write_cog(path: Path, data: np.ndarray, profile: dict[str, Any], descriptions, tags: dict[str, str]) -> None:
    """A small uint8 COG (one tile), written under a temporary name and renamed when complete."""
    from rasterio.io import MemoryFile
    from rio_cogeo.cogeo import cog_translate
    from rio_cogeo.profiles import cog_profiles

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with MemoryFile() as mem:
            with mem.open(**{k: v for k, v in profile.items() if k not in ("blockxsize", "blockysize", "tiled")}) as dst:
                dst.write(data)
                dst.descriptions = descriptions
                dst.update_tags(**tags)
            with mem.open() as src:
                cog_translate(src, str(tmp), cog_profiles.get("deflate"), nodata=0, overview_resampling="mode",
                              in_memory=True, quiet=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _tile_counts(path: Path) -> dict[str, Any]:
    """Cells per class code of the tile's delivered band (lczFilter, else lcz) and its shape, for the summary."""
    import rasterio

    with rasterio.open(path) as src:
        band = src.descriptions.index("lczFilter") + 1 if "lczFilter" in src.descriptions else 1
        counts = np.bincount(src.read(band).ravel(), minlength=18)
    return {"counts": counts.tolist(), "path": str(path)}


# ---- the mosaic ---------------------------------------------------------------------------------------

def mosaic_geobox(plan: RegionPlan):
    """The mosaic's grid: the region's bounds in the mosaic CRS, at GLOBAL_LCZ_DEGREES (scaled by resolution) or metres."""
    from odc.geo.crs import CRS
    from odc.geo.geobox import GeoBox

    crs = CRS(plan.crs)
    res = GLOBAL_LCZ_DEGREES * plan.spec.resolution / 100.0 if crs.geographic else plan.spec.resolution
    bounds = None
    for tile in plan.tiles:
        b = Geometry(tile.delivered(), tile.crs).to_crs(crs).boundingbox
        bounds = b if bounds is None else (min(bounds[0], b[0]), min(bounds[1], b[1]), max(bounds[2], b[2]), max(bounds[3], b[3]))
    return GeoBox.from_bbox(bounds, crs, resolution=res)


def write_mosaic(plan: RegionPlan, results: list[dict[str, Any]], seconds: dict[str, float]) -> dict[str, Any]:
    """Write the delivered files from the tile COGs, block by block (memory: a tile, not the region); returns the summary."""
    from .mosaic import qgis_style

    spec, out = plan.spec, plan.out
    names = list(BANDS if spec.filter else ("lcz", "lczProbability"))
    t0 = time.perf_counter()
    outputs: dict[str, str] = {}
    if plan.tiles_output:
        for epsg in sorted({t.epsg for t in plan.tiles}):
            vrt = out.with_name(f"{out.stem}_{epsg}.vrt")
            _write_vrt(vrt, [spec.tile_path(t) for t in plan.tiles if t.epsg == epsg], names)
            outputs[str(epsg)] = vrt.name
    else:
        _warp_mosaic(plan, out, names)
        outputs["map"] = out.name
    style = out.with_name(f"{out.stem}.qml")
    style.write_text(qgis_style(band=names.index("lczFilter" if spec.filter else "lcz") + 1))
    seconds["mosaic"] = round(time.perf_counter() - t0, 3)
    summary = _summary(plan, results, seconds, outputs)
    write_json_atomic(out.with_name(f"{out.stem}.summary.json"), summary)
    return summary


def _warp_mosaic(plan: RegionPlan, out: Path, names: list[str]) -> None:
    """Reproject every tile (nearest neighbour) into its window of a tiled GeoTIFF, then stream it into a COG."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    from rasterio.windows import Window, from_bounds
    from rio_cogeo.cogeo import cog_translate
    from rio_cogeo.profiles import cog_profiles

    from .mosaic import colour_tag

    box = mosaic_geobox(plan)
    height, width = box.shape
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial.tmp")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with rasterio.open(partial, "w+", driver="GTiff", width=width, height=height, count=len(names), dtype="uint8",
                           crs=box.crs.wkt, transform=box.affine, nodata=0, tiled=True, blockxsize=512, blockysize=512,
                           compress="deflate", BIGTIFF="IF_SAFER") as dst:
            dst.descriptions = tuple(names)
            tags: dict[str, str] = {}
            for tile in plan.tiles:
                with rasterio.open(plan.spec.tile_path(tile)) as src:
                    tags = tags or src.tags()
                    bounds = Geometry(shapely.box(*src.bounds), tile.crs).to_crs(box.crs).boundingbox
                    win = _outer_window(from_bounds(*bounds, transform=box.affine))
                    win = Window(win.col_off - 1, win.row_off - 1, win.width + 2, win.height + 2).intersection(  # margin
                        Window(0, 0, width, height))
                    with WarpedVRT(src, crs=box.crs.wkt, transform=dst.window_transform(win), width=int(win.width),
                                   height=int(win.height), resampling=Resampling.nearest, nodata=0) as vrt:
                        new = vrt.read()
                    old = dst.read(window=win)
                    dst.write(np.where(new != 0, new, old), window=win)
            for key in ("created", "city", "inputs"):  # a tile's own; the region's follow
                tags.pop(key, None)
            tags.update(region=plan.spec.config.name, tiles=str(len(plan.tiles)), LCZ_COLOURS=colour_tag())
            dst.update_tags(**tags)
        with rasterio.open(partial) as src:
            cog_translate(src, str(tmp), cog_profiles.get("deflate"), nodata=0, overview_resampling="mode",
                          in_memory=False, quiet=True)
        os.replace(tmp, out)
    finally:
        partial.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


def _write_vrt(path: Path, tiles: list[Path], names: list[str]) -> None:
    """A GDAL VRT mosaic of same-CRS, same-grid tile COGs (paths relative to the VRT)."""
    import rasterio
    from xml.sax.saxutils import escape

    infos = []
    for t in tiles:
        with rasterio.open(t) as src:
            infos.append((t, src.transform, src.width, src.height, src.crs.wkt))
    res = infos[0][1].a, infos[0][1].e
    x0 = min(i[1].c for i in infos)
    y0 = max(i[1].f for i in infos)
    x1 = max(i[1].c + i[2] * res[0] for i in infos)
    y1 = min(i[1].f + i[3] * res[1] for i in infos)
    width, height = round((x1 - x0) / res[0]), round((y1 - y0) / res[1])
    bands = []
    for b, name in enumerate(names, start=1):
        sources = "".join(
            f'<ComplexSource><SourceFilename relativeToVRT="1">{escape(os.path.relpath(t, path.parent))}</SourceFilename>'
            f"<SourceBand>{b}</SourceBand><SrcRect xOff=\"0\" yOff=\"0\" xSize=\"{w}\" ySize=\"{h}\"/>"
            f'<DstRect xOff="{round((tr.c - x0) / res[0])}" yOff="{round((tr.f - y0) / res[1])}" xSize="{w}" ySize="{h}"/>'
            f"<NODATA>0</NODATA></ComplexSource>"
            for t, tr, w, h, _ in infos)
        bands.append(f'<VRTRasterBand dataType="Byte" band="{b}"><Description>{name}</Description>'
                     f"<NoDataValue>0</NoDataValue>{sources}</VRTRasterBand>")
    doc = (f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>{escape(infos[0][4])}</SRS>'
           f"<GeoTransform>{x0!r}, {res[0]!r}, 0.0, {y0!r}, 0.0, {res[1]!r}</GeoTransform>{''.join(bands)}</VRTDataset>\n")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(doc)
    os.replace(tmp, path)


def _summary(plan: RegionPlan, results: list[dict[str, Any]], seconds: dict[str, float], outputs: dict[str, str]) -> dict[str, Any]:
    from .classes import lcz_classes

    counts = np.sum([r["counts"] for r in results], axis=0) if results else np.zeros(18, int)
    cell_km2 = plan.spec.resolution ** 2 / 1e6
    mapped = int(counts[1:].sum())
    return {
        "region": plan.spec.config.name,
        "outputs": outputs,
        "crs": plan.crs,
        "tiles": len(plan.tiles),
        "tile_km": plan.tile_km,
        "zones": sorted({t.epsg for t in plan.tiles}),
        # Areas are counted on the tiles' UTM cells (equal area per cell), not on the reprojected mosaic.
        "classes": {str(c.code): {"lcz": c.lcz, "name": c.name, "km2": round(float(counts[c.code] * cell_km2), 4),
                                  "percent": round(100.0 * counts[c.code] / mapped, 2) if mapped else 0.0}
                    for c in lcz_classes()},
        "mapped_km2": round(mapped * cell_km2, 4),
        "seconds": seconds,
        "resolution_m": plan.spec.resolution,
    }


# ---- running it --------------------------------------------------------------------------------------

def map_region(plan: RegionPlan, *, client: Any = None, workers: int | None = None, threads: int | None = None,
               scheduler: str | None = None, progress: bool = True,
               on_tile: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Map every tile not yet finished, then write the mosaic; returns the region's summary.

    Without a cluster the tiles run one after another here (their blocks on the threaded scheduler);
    with one, every tile is a task on a worker, which writes the tile itself. A failed tile fails the run
    after the others are done; finished tiles stay, so the same command resumes.
    """
    import contextlib

    from .cluster import dask_client

    t0 = time.perf_counter()
    done = sum(plan.spec.tile_path(t).exists() for t in plan.tiles)
    log.info("%s: %d tiles of %g km in %d UTM zone(s); %d already done", plan.spec.config.name, len(plan.tiles),
             plan.tile_km, len({t.epsg for t in plan.tiles}), done)
    results: list[dict[str, Any]] = []
    errors: list[str] = []

    def finished(result: dict[str, Any]) -> None:
        results.append(result)
        if on_tile is not None:
            on_tile(result)

    with contextlib.ExitStack() as stack:
        if client is None and (workers is not None or scheduler is not None):
            client = stack.enter_context(dask_client(workers, scheduler, threads=threads))
        if client is None:
            bar = _bar(progress, len(plan.tiles))
            for tile in plan.tiles:
                try:
                    finished(map_tile(plan.spec, tile))
                except LczmapError:
                    raise  # bad input fails every tile alike: stop at the first
                except Exception as exc:  # noqa: BLE001  one tile's failure; the others go on
                    errors.append(f"tile {tile.id}: {type(exc).__name__}: {exc}".splitlines()[0])
                bar.update()
            bar.close()
        else:
            from distributed import as_completed

            futures = client.map(map_tile, [plan.spec] * len(plan.tiles), plan.tiles, pure=False,
                                 key=[f"lczmap-tile-{t.id}-{os.getpid()}" for t in plan.tiles])
            bar = _bar(progress, len(futures))
            for future in as_completed(futures):
                try:
                    finished(future.result())
                except LczmapError:
                    client.cancel(futures)
                    raise
                except Exception as exc:  # noqa: BLE001
                    errors.append(f"{future.key}: {type(exc).__name__}: {exc}".splitlines()[0])
                future.release()
                bar.update()
            bar.close()
        if errors:
            raise LczmapError(f"{len(errors)} of {len(plan.tiles)} tiles failed ({errors[0]}); finished tiles are kept: "
                              f"run the same command again to resume")
        seconds = {"tiles": round(time.perf_counter() - t0, 3)}
        if client is not None:  # the mosaic is written by a worker too: the client never reads the map
            return client.submit(write_mosaic, plan, results, seconds, pure=False).result()
        return write_mosaic(plan, results, seconds)


def _bar(progress: bool, total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="tiles", unit="tile", disable=not progress, leave=False)
