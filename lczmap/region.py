"""Map a region of any size as tiles on a fixed grid, one UTM zone each, and deliver one mosaic (or per-zone VRTs).

The region is cut per UTM zone (6-degree strips, north and south of the equator apart) into square tiles
of `tile_km` on a grid fixed in the zone's coordinates (tile (i, j) spans [i T, (i+1) T) x [j T, (j+1) T)
metres), so a tile's place never depends on the AOI. Each tile is mapped like a city, in its zone's grid,
over its core plus a halo of the largest filter radius: the Gaussian filter of every core cell then sees
exactly the cells it sees in one grid, so tiles meet without seams. A tile's core is kept as a COG in
`<out>.tiles/<EPSG>/`; finished tiles are the resumable units (a rerun after a kill maps only the rest).
The mosaic is written in EPSG:4326 at the global LCZ map's 0.000898 degrees (or `--crs`) block by block
through the city's writer (lczmap.predict / lczmap.mosaic), as the same files as a city's map; with `--tiles`,
the same files per zone as VRTs over its tile COGs.

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

from .atomic import atomic_files, blocks_folder, write_json_atomic
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
# A tile COG's bands: class_stack's layout (lcz, lczFilter, lczProbability, cell status).
TILE_BANDS = ("lcz", "lczFilter", "lczProbability", "filled")
# Cells per side of a mosaic block (the unit of reprojection and writing).
MOSAIC_BLOCK = 1024


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
        for base in (32600, 32700):
            epsg = base + k % 60 + 1
            strip = shapely.box(*zone_strip(epsg))
            part = ll.intersection(strip)
            if not part.is_empty and part.area > 0:
                parts.append((epsg, part, strip))
    if not parts:
        raise LczmapError("the AOI lies outside the UTM zones (80 S to 84 N); give a projected --crs for polar regions")
    return parts


def zone_strip(epsg: int) -> tuple[float, float, float, float]:
    """(west, south, east, north) in degrees of the strip a UTM zone's EPSG code (326zz north, 327zz south) stands for."""
    west = -180.0 + 6 * (epsg % 100 - 1)
    south, north = (0.0, 84.0) if epsg < 32700 else (-80.0, 0.0)
    return west, south, west + 6, north


def in_zone_strip(box: Any, epsg: int) -> np.ndarray:
    """(h, w) bool: the cells of GeoBox `box` whose centre lies in the zone's strip (west and south edges included).

    Half-open, so a point on the edge of two strips belongs to one: counting each zone's cells with this
    counts every place once, although tile cores overlap by a cell across a zone edge.
    """
    from pyproj import Transformer

    h, w = box.shape
    cols, rows = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    x, y = box.affine * (cols, rows)
    lon, lat = Transformer.from_crs(box.crs.to_wkt(), "EPSG:4326", always_xy=True).transform(x, y)
    west, south, east, north = zone_strip(epsg)
    return (lon >= west) & (lon < east) & (lat >= south) & (lat < north)


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
             "inputs": _input_stamps(config), "tile_bands": list(TILE_BANDS)}  # tiles of another layout are redone
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
    """Map one tile over core + halo, keep its core as a COG at spec.tile_path(tile); returns its area table.

    The tile COG holds `class_stack`'s four bands (lcz, lczFilter, lczProbability, filled) on the tile's
    core cells (0 elsewhere), written by the city's writer pieces. Idempotent: a tile whose COG exists is not redone.
    """
    import rasterio
    from odc.geo.geobox import GeoBox
    from rasterio.features import geometry_mask

    from .mosaic import LCZ_FILTER, Band, class_vrt, translate_cog, write_block
    from .predict import output_paths, predict_city

    path = spec.tile_path(tile)
    if path.exists():
        return {"id": tile.id, "skipped": True, "path": str(path), "areas": _tile_areas(path, tile.epsg).tolist()}
    t0 = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.parent / f".{tile.id}.{os.getpid()}.tmp"
    scratch.mkdir(exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        aoi_file = scratch / "aoi.geojson"
        aoi_file.write_text(json.dumps({"type": "FeatureCollection",
                                        "crs": {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{tile.epsg}"}},
                                        "features": [{"type": "Feature", "properties": {},
                                                      "geometry": shapely.geometry.mapping(shapely.from_wkt(tile.aoi_wkt))}]}))
        config = replace(spec.config, aoi=aoi_file, name=tile.id)
        files = output_paths(scratch / "tile.tif")
        predict_city(config, files["map"], model=spec.model, resolution=spec.resolution, crs=tile.crs, filter=spec.filter,
                     progress=False, **spec.options)
        with rasterio.open(files["lcz3"]) as src, rasterio.open(files["filled"]) as filled:
            window = _outer_window(src.window(*tile.delivered().bounds))
            index = {name: b for b, name in enumerate(src.descriptions, start=1)}
            # class_stack's layout; without the filter its lczFilter is the raw class, as in class_stack
            data = np.concatenate([src.read([index["lcz"], index.get("lczFilter", index["lcz"]), index["lczProbability"]],
                                            window=window, boundless=True, fill_value=0),
                                   filled.read([1], window=window, boundless=True, fill_value=0)])
            box = GeoBox(data.shape[1:], src.window_transform(window), src.crs)
            tags = src.tags()
        data[:, geometry_mask([shapely.from_wkt(tile.core_wkt)], out_shape=box.shape, transform=box.affine)] = 0
        rows, cols = slice(0, box.shape[0]), slice(0, box.shape[1])
        write_block(data, str(scratch / "b0_0.tif"), box, rows, cols, area_band=LCZ_FILTER)
        areas = _zone_areas(data, box, tile.epsg)
        bands = [Band(b + 1, name) for b, name in enumerate(TILE_BANDS)]  # no colour table: TIFF has none for 4 bands
        vrt = scratch / "tile.vrt"
        vrt.write_text(class_vrt(box, [("b0_0.tif", rows, cols)], bands, tags))
        translate_cog(vrt, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return {"id": tile.id, "skipped": False, "seconds": round(time.perf_counter() - t0, 3), "path": str(path),
            "areas": areas.tolist()}


def _outer_window(exact: Any) -> Any:
    """The whole-pixel window that holds a fractional one (rasterio Window)."""
    from rasterio.windows import Window

    col, row = math.floor(exact.col_off + 1e-6), math.floor(exact.row_off + 1e-6)
    return Window(col, row, math.ceil(exact.col_off + exact.width - 1e-6) - col,
                  math.ceil(exact.row_off + exact.height - 1e-6) - row)


def _tile_areas(path: Path, epsg: int) -> np.ndarray:
    """The (status, code) area table of a tile COG (see `_zone_areas`)."""
    import rasterio
    from odc.geo.geobox import GeoBox

    with rasterio.open(path) as src:
        data = src.read()
        box = GeoBox(src.shape, src.transform, src.crs)
    return _zone_areas(data, box, epsg)


def _zone_areas(data: np.ndarray, box: Any, epsg: int) -> np.ndarray:
    """The (status, code) area table of a tile's delivered band (lczFilter), in km2 of its own cells, counting only
    cells whose centre lies in its zone's strip: the one-cell overlap of the core across a zone edge (kept in the
    tile so the mosaic has no gap) is the neighbouring zone's, and counted there."""
    from .mosaic import LCZ_FILTER, STATUS, block_areas, cell_areas_km2

    counted = in_zone_strip(box, epsg)
    return block_areas(np.where(counted, data[LCZ_FILTER], 0), np.where(counted, data[STATUS], 0), cell_areas_km2(box))


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


@dataclass(frozen=True)
class _Mosaic:
    """What a mosaic block task needs: the mosaic grid, and every tile COG with its bounds in the mosaic CRS."""

    box: Any  # GeoBox
    tiles: tuple[tuple[str, tuple[float, float, float, float]], ...]


def write_mosaic(plan: RegionPlan, results: list[dict[str, Any]], seconds: dict[str, float]) -> dict[str, Any]:
    """Write the delivered files from the tile COGs, as a city's (see `predict.output_paths`); returns the summary.

    The mosaic: the tiles reprojected (nearest neighbour) block by block onto the mosaic grid by the city's
    blockwise writer (block GeoTIFFs, a VRT per file, copied to COGs by GDAL), so memory is a block's, not the
    region's; its areas are those of the written grid, and its quicklook is drawn from the COGs' overviews.
    With `--tiles`: per zone, VRTs over the tile COGs with the same bands, and areas of the tiles' cells (each
    place counted in one zone); no quicklook, as a figure of one zone would show only part of the region.
    """
    from .mosaic import area_method
    from .predict import class_files, class_styles, draw_quicklook, output_paths

    spec, out = plan.spec, plan.out
    t0 = time.perf_counter()
    tags = _mosaic_tags(plan)
    files = class_files(spec.filter, tags)
    bands = {key: [b.description for b in file_bands] for key, (file_bands, _, _) in files.items()}
    paths = output_paths(out)
    if plan.tiles_output:
        zones = sorted({t.epsg for t in plan.tiles})
        written = {f"{epsg}{suffix}": path for epsg in zones
                   for suffix, path in _zone_paths(out.with_name(f"{out.stem}_{epsg}.tif")).items()}
        wanted = {**written, "summary": paths["summary"]}
    else:
        wanted = {k: paths[k] for k in ("map", "map_aux", "lcz3", "filled", "quicklook", "style", "lcz3_style", "summary")}
    # Locked on the mosaic's name in both cases, so a --tiles run and a mosaic run of one --out never overlap.
    lock = [] if "map" in wanted else [out]
    with atomic_files([*lock, *wanted.values()]) as all_tmps:
        tmp = dict(zip(wanted, all_tmps[len(lock):]))
        if plan.tiles_output:
            areas = _write_zone_vrts(plan, results, files, tmp)
            method = "cell size of the tiles' UTM grids, each place counted in one zone (cell centres in its strip)"
        else:
            box, areas = _write_mosaic_cogs(plan, files, tmp)
            method = area_method(box)
            draw_quicklook(tmp["map"], tmp["filled"], tmp["quicklook"], name=spec.config.name, filtered=spec.filter,
                           model=tags.get("model"))
            for key, text in class_styles(spec.filter).items():
                tmp[key].write_text(text)
        seconds["mosaic"] = round(time.perf_counter() - t0, 3)
        summary = _summary(plan, areas, seconds, {k: p.name for k, p in wanted.items()}, bands, method)
        tmp["summary"].write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _mosaic_tags(plan: RegionPlan) -> dict[str, str]:
    """A tile's tags (model, weights, version, ...) less those of the tile alone, plus the region's."""
    import rasterio

    with rasterio.open(plan.spec.tile_path(plan.tiles[0])) as src:
        tags = src.tags()
    for key in ("created", "city", "inputs", "LCZ_COLOURS", "AREA_OR_POINT"):
        tags.pop(key, None)
    return {**tags, "region": plan.spec.config.name, "tiles": str(len(plan.tiles))}


def _zone_paths(zone: Path) -> dict[str, Path]:
    """A zone's VRTs (named like a city's files, `.vrt`) and styles, by key suffix."""
    from .predict import output_paths

    paths = output_paths(zone)
    return {"": paths["map"].with_suffix(".vrt"), "_lcz3": paths["lcz3"].with_suffix(".vrt"),
            "_filled": paths["filled"].with_suffix(".vrt"), "_style": paths["style"], "_lcz3_style": paths["lcz3_style"]}


def _write_zone_vrts(plan: RegionPlan, results: list[dict[str, Any]], files: dict[str, Any],
                     tmp: dict[str, Path]) -> np.ndarray:
    """Per zone, a VRT of each file over the zone's tile COGs (same grid, no resampling); the tiles' summed areas."""
    import rasterio
    from affine import Affine
    from odc.geo.geobox import GeoBox

    from .mosaic import class_vrt
    from .predict import class_styles

    for epsg in sorted({t.epsg for t in plan.tiles}):
        infos = []
        for tile in (t for t in plan.tiles if t.epsg == epsg):
            path = plan.spec.tile_path(tile)
            with rasterio.open(path) as src:
                infos.append((path, src.transform, src.height, src.width, src.crs))
        res = infos[0][1].a
        x0, y0 = min(i[1].c for i in infos), max(i[1].f for i in infos)
        x1, y1 = max(i[1].c + i[3] * res for i in infos), min(i[1].f - i[2] * res for i in infos)
        box = GeoBox((round((y0 - y1) / res), round((x1 - x0) / res)), Affine(res, 0, x0, 0, -res, y0), infos[0][4])
        blocks = []
        for path, tr, h, w, _ in infos:
            row, col = round((y0 - tr.f) / res), round((tr.c - x0) / res)
            blocks.append((os.path.relpath(path, plan.out.parent), slice(row, row + h), slice(col, col + w)))
        for key, (bands, file_tags, _) in files.items():
            tmp[f"{epsg}{'' if key == 'map' else '_' + key}"].write_text(class_vrt(box, blocks, bands, file_tags))
        for key, text in class_styles(plan.spec.filter).items():
            tmp[f"{epsg}_{key}"].write_text(text)
    return np.sum([r["areas"] for r in results], axis=0)


def _write_mosaic_cogs(plan: RegionPlan, files: dict[str, Any], tmp: dict[str, Path]) -> tuple[Any, np.ndarray]:
    """The tiles reprojected block by block onto the mosaic grid and written as the city's COGs; (grid, areas)."""
    import rasterio

    from .cluster import graph_runner
    from .mosaic import LCZ_FILTER, N_CLASS_BANDS, write_blocks
    from .predict import write_cogs
    from .stage import blockwise_array

    box = mosaic_geobox(plan)
    tiles = []
    for tile in plan.tiles:
        path = plan.spec.tile_path(tile)
        with rasterio.open(path) as src:
            tiles.append((str(path), tuple(Geometry(shapely.box(*src.bounds), src.crs.wkt).to_crs(box.crs).boundingbox)))
    mosaic = _Mosaic(box=box, tiles=tuple(tiles))
    stack = blockwise_array(_mosaic_block, mosaic, f"lczmap-mosaic-{plan.spec.config.name}-{os.getpid()}", box.shape,
                            MOSAIC_BLOCK, N_CLASS_BANDS).astype(np.uint8)
    run = graph_runner(None, None, False, desc="mosaic blocks")  # threads here, or the worker's threads on a cluster
    folder = blocks_folder(tmp["map"])
    try:
        areas = write_blocks(stack, box, folder, run, area_band=LCZ_FILTER)
        write_cogs(box, folder, stack.chunks[1:], files, tmp, run)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return box, areas


def _mosaic_block(mosaic: _Mosaic, rows: slice, cols: slice) -> np.ndarray:
    """One mosaic block: every tile that reaches it, reprojected by nearest neighbour; a cell comes from the tile that
    holds it (status > 0), the later tile where two do (the one-cell overlap at a zone edge)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    from .mosaic import N_CLASS_BANDS, STATUS

    sub = mosaic.box[rows, cols]
    left, bottom, right, top = sub.boundingbox
    out = np.zeros((N_CLASS_BANDS, *sub.shape), np.uint8)
    for path, (w, s, e, n) in mosaic.tiles:
        if w >= right or e <= left or s >= top or n <= bottom:
            continue
        with rasterio.open(path) as src, WarpedVRT(src, crs=sub.crs.wkt, transform=sub.affine, width=sub.shape[1],
                                                  height=sub.shape[0], resampling=Resampling.nearest, nodata=0) as vrt:
            new = vrt.read()
        inside = new[STATUS] != 0
        out[:, inside] = new[:, inside]
    return out


def _summary(plan: RegionPlan, areas: np.ndarray, seconds: dict[str, float], outputs: dict[str, str],
             bands: dict[str, list[str]], method: str) -> dict[str, Any]:
    from .mosaic import area_summary

    return {
        "region": plan.spec.config.name,
        "outputs": outputs,
        "bands": bands,
        "area_band": "lczFilter" if plan.spec.filter else "lcz",
        "area_method": method,
        **area_summary(np.asarray(areas)),
        "crs": plan.crs,
        "tiles": len(plan.tiles),
        "tile_km": plan.tile_km,
        "zones": sorted({t.epsg for t in plan.tiles}),
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
