"""Map a region of any size as tiles on a fixed grid, one UTM zone each, and deliver one mosaic (or per-zone VRTs).

The region is cut per UTM zone (6-degree strips, north and south of the equator apart) into square tiles
of `tile_km` on a grid fixed in the zone's coordinates (tile (i, j) spans [i T, (i+1) T) x [j T, (j+1) T)
metres), so a tile's place never depends on the AOI. Each tile is planned like a city, in its zone's grid,
over its core plus a halo of the largest filter radius: the Gaussian filter of every core cell then sees
exactly the cells it sees in one grid, so tiles meet without seams. The class bands of a tile's block graph
are cut to its core and kept as a COG in `<out>.tiles/<EPSG>/`; finished tiles are the resumable units (a
rerun after a kill maps only the rest). The mosaic is written in EPSG:4326 at the global LCZ map's
0.000898 degrees (or `--crs`) block by block (lczmap.mosaic.mosaic_block) through the city's writer
(lczmap.outputs), as the same files as a city's map; with `--tiles`, the same files per zone as VRTs over
its tile COGs.

Tasks run where lczmap.cluster.runner puts them: tile after tile here, or one task per tile on a Dask
cluster (the client holds only the tile list and small results; tiles are written by the workers).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
from distributed import as_completed
from odc.geo.crs import CRS
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry
from rasterio.features import geometry_mask
from tqdm import tqdm

from .aoi import read_aoi
from .atomic import write_json_atomic
from .card import resolve_model
from .cluster import Runner, runner
from .config import CityConfig
from .errors import LczmapError
from .grid import (MAX_GRID_EXTENT_M, check_region_size, in_zone_strip, plan_size, to_lonlat, to_zone, zone_parts,
                   zone_to_lonlat)
from .guard import SAMPLE_BLOCKS
from .inference import plan_model
from .mosaic import (LCZ_FILTER, N_CLASS_BANDS, STATUS, aoi_array, area_method, block_areas, cell_areas_km2, class_stack,
                     mosaic_block, mosaic_geobox)
from .outputs import (Band, check_output, class_files, class_styles, colour_tag, draw_quicklook, file_set,
                      input_credits, map_tags, output_paths, region_summary, write_array_cog, write_class_cogs,
                      write_summary, write_tile_vrts, zone_files)
from .plan import MosaicPlan, PredictPlan, RegionPlan, RegionSpec, Tile
from .predict import MAPPING_NETWORKS, block_tasks, guard_inputs, plan_city
from .stage import blockwise_array

log = logging.getLogger(__name__)

# A single UTM grid serves AOIs up to this width; wider ones are mapped as a region of tiles.
REGION_EXTENT_M = MAX_GRID_EXTENT_M
DEFAULT_TILE_KM = 32.0
# The filter's reach: the largest kernel radius of FILTER_RADIUS_SIGMA_M (LCZ 8 and 10), in metres.
FILTER_REACH_M = 500.0
STATE_FILE = "region.json"
# A tile COG's bands: class_stack's layout (lcz, lczFilter, lczProbability, cell status).
TILE_BANDS = ("lcz", "lczFilter", "lczProbability", "filled")
# Cells per side of a mosaic block (the unit of reprojection and writing).
MOSAIC_BLOCK = 1024
# The mosaic's files, by lczmap.outputs.output_paths key (a region has no probabilities file).
MOSAIC_FILES = ("map", "map_aux", "lcz3", "filled", "quicklook", "style", "lcz3_style", "summary")


def needs_region(aoi: Geometry, tile_km: float | None = None) -> bool:
    """True when the AOI is mapped as a region: wider than REGION_EXTENT_M (in its own UTM zone), or tiles are asked for."""
    if tile_km is not None:
        return True
    return plan_size(aoi).extent_m > REGION_EXTENT_M


def plan_tiles(aoi: Geometry, tile_km: float = DEFAULT_TILE_KM, resolution: float = 100.0) -> list[Tile]:
    """The region's tiles on the fixed per-zone grid: every tile square that holds part of the AOI."""
    size = round(tile_km * 1000 / resolution) * resolution  # whole output cells, so tile edges are cell edges
    if size <= 0:
        raise LczmapError(f"--tile-km {tile_km:g}: must be at least one {resolution:g} m cell")
    halo = math.ceil(FILTER_REACH_M / resolution) * resolution
    ll = to_lonlat(aoi).geom
    tiles = []
    for epsg, part, strip in zone_parts(aoi):
        part_utm = to_zone(part, epsg)
        # One cell of overlap across the zone edge, so the mosaic has no gap where the meridian cuts cells.
        strip_utm = to_zone(strip, epsg).buffer(resolution, join_style="mitre")
        minx, miny, maxx, maxy = part_utm.bounds
        for i in range(math.floor(minx / size), math.ceil(maxx / size)):
            for j in range(math.floor(miny / size), math.ceil(maxy / size)):
                square = shapely.box(i * size, j * size, (i + 1) * size, (j + 1) * size)
                if not square.intersects(part_utm) or square.intersection(part_utm).area == 0:
                    continue
                core = square.intersection(strip_utm)
                reach = shapely.box(*core.buffer(halo, join_style="mitre").bounds)
                tile_aoi = to_zone(ll.intersection(zone_to_lonlat(reach, epsg)), epsg).intersection(reach)
                if tile_aoi.is_empty or tile_aoi.area == 0:
                    continue
                tiles.append(Tile(id=f"{epsg}_{i:+05d}_{j:+05d}", epsg=epsg, core_wkt=core.wkt, aoi_wkt=tile_aoi.wkt))
    return tiles


def output_crs(crs: str | None) -> str:
    """The mosaic's CRS: EPSG:4326 by default, else `crs` as PROJ knows it."""
    try:
        return str(CRS(crs or "EPSG:4326"))
    except Exception:  # pyproj's many error types; one line for the user
        raise LczmapError(f"--crs {crs}: not a CRS that PROJ knows (try EPSG:4326 or EPSG:3035)") from None


def plan_region(config: CityConfig, out: str | Path, *, model: str, resolution: float = 100.0, crs: str | None = None,
                tile_km: float | None = None, tiles_output: bool = False, filter: bool = True, **options: Any) -> RegionPlan:
    """Check the options and cut the AOI into tiles (nothing is written: see `prepare_tiles`).

    `options` go to every tile's plan_city (batch_size, nodata_threshold, vhr, ...).
    """
    t0 = time.perf_counter()
    out = check_output(out, config)
    card = resolve_model(model, MAPPING_NETWORKS)  # a model that cannot map stops the run before any tile
    tile_km = DEFAULT_TILE_KM if tile_km is None else float(tile_km)
    mosaic_crs = output_crs(crs)
    aoi = read_aoi(config.aoi)
    check_region_size(aoi, tile_km, config.aoi)
    tiles = plan_tiles(aoi, tile_km, resolution)
    work = out.with_name(f"{out.stem}.tiles")
    spec = RegionSpec(config=config, work=work, model=str(model), resolution=float(resolution), filter=bool(filter),
                      options=dict(options))
    state = {"config": {k: str(v) for k, v in asdict(config).items()}, "model": card.name,
             "weights_sha256": card.weights_sha256, "resolution": spec.resolution, "tile_km": tile_km,
             "filter": spec.filter, "options": {k: str(v) for k, v in sorted(options.items())},
             "inputs": _input_stamps(config), "tile_bands": list(TILE_BANDS)}  # tiles of another layout are redone
    return RegionPlan(spec=spec, out=out, crs=mosaic_crs, tiles=tuple(tiles), tiles_output=tiles_output, tile_km=tile_km,
                      state=state, plan_seconds=time.perf_counter() - t0)


def _input_stamps(config: CityConfig) -> list[Any]:
    """Size and time of every input path, so a rerun with changed inputs starts over instead of mixing tiles."""
    values = [v for value in asdict(config).values() for v in (value if isinstance(value, tuple) else (value,))]
    paths = sorted(v for v in values if isinstance(v, Path))
    return [(str(p), p.stat().st_size, p.stat().st_mtime_ns) if p.exists() else (str(p),) for p in paths]


def prepare_tiles(plan: RegionPlan) -> None:
    """Make `<out>.tiles/` ready for the plan's tiles: its finished tiles are kept only while its inputs and options are
    unchanged; temporaries of a killed run are removed."""
    work, state = plan.spec.work, plan.state
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

    The tile is planned like a city over its AOI (core + halo) in its zone's grid; its class bands
    (`class_stack`'s four: lcz, lczFilter, lczProbability, filled) are computed block by block, cut to the
    cells holding the core (0 outside the core) and written as the tile's COG by the city's writer pieces.
    Idempotent: a tile whose COG exists is not redone.
    """
    path = spec.tile_path(tile)
    if path.exists():
        return {"id": tile.id, "skipped": True, "path": str(path), "areas": _tile_areas(path, tile.epsg).tolist()}
    t0 = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    plan = _tile_plan(spec, tile, tile.id)
    # The output cells that hold the delivered part, on the tile's own grid (a millionth of a cell of slack).
    roi = plan.grid.output.overlap_roi(GeoBox.from_bbox(tile.delivered().bounds, tile.crs, resolution=spec.resolution,
                                                        tol=1e-6))
    box = plan.grid.output[roi]
    plan_model(plan)  # load the model (and start the backend) before the first block, not inside it
    stack = class_stack(block_tasks(plan), aoi_array(plan), plan.resolution, filter=spec.filter)
    data = Runner(desc="tile blocks")(stack[(slice(None), *roi)])
    data[:, geometry_mask([shapely.from_wkt(tile.core_wkt)], out_shape=box.shape, transform=box.affine)] = 0
    bands = [Band(b + 1, name) for b, name in enumerate(TILE_BANDS)]  # no colour table: TIFF has none for 4 bands
    write_array_cog(data, box, path, bands, {**map_tags(plan), "LCZ_COLOURS": colour_tag()})
    return {"id": tile.id, "skipped": False, "seconds": round(time.perf_counter() - t0, 3), "path": str(path),
            "areas": _zone_areas(data, box, tile.epsg).tolist()}


def _tile_plan(spec: RegionSpec, tile: Tile, name: str) -> PredictPlan:  # as map_tile plans it, named `name`
    return plan_city(replace(spec.config, name=name), spec.model, resolution=spec.resolution, crs=tile.crs,
                     aoi=Geometry(shapely.from_wkt(tile.aoi_wkt), tile.crs), **spec.options)


def guard_region(plan: RegionPlan, strict: bool = False) -> dict[str, Any]:
    """lczmap.predict.guard_inputs once for the region (`strict`: refusing), its windows shared among up to SAMPLE_BLOCKS
    tiles spread over it; returns the summary's input_warnings and model_synthetic."""
    picks = sorted({round(k) for k in np.linspace(0, len(plan.tiles) - 1, min(SAMPLE_BLOCKS, len(plan.tiles)))})
    plans = [_tile_plan(plan.spec, plan.tiles[k], plan.spec.config.name) for k in picks]
    guarded = guard_inputs(plans[0], strict, plans[1:])
    return {"input_warnings": list(guarded.input_warnings), "model_synthetic": guarded.synthetic_model}


def _tile_areas(path: Path, epsg: int) -> np.ndarray:
    """The (status, code) area table of a tile COG (see `_zone_areas`)."""
    with rasterio.open(path) as src:
        data = src.read()
        box = GeoBox(src.shape, src.transform, src.crs)
    return _zone_areas(data, box, epsg)


def _zone_areas(data: np.ndarray, box: Any, epsg: int) -> np.ndarray:
    """The (status, code) area table of a tile's delivered band (lczFilter), in km2 of its own cells, counting only
    cells whose centre lies in its zone's strip: the one-cell overlap of the core across a zone edge (kept in the
    tile so the mosaic has no gap) is the neighbouring zone's, and counted there."""
    counted = in_zone_strip(box, epsg)
    return block_areas(np.where(counted, data[LCZ_FILTER], 0), np.where(counted, data[STATUS], 0), cell_areas_km2(box))


# ---- the mosaic ---------------------------------------------------------------------------------------

def write_mosaic(plan: RegionPlan, results: list[dict[str, Any]], seconds: dict[str, float],
                 guard: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the delivered files from the tile COGs, as a city's (see `lczmap.outputs.output_paths`); returns the summary.

    The mosaic: the tiles reprojected (nearest neighbour) block by block onto the mosaic grid and written by the
    city's blockwise writer (block GeoTIFFs, a VRT per file, copied to COGs by GDAL), so memory is a block's, not
    the region's; its areas are those of the written grid, and its quicklook is drawn from the COGs' overviews.
    With `--tiles`: per zone, VRTs over the tile COGs with the same bands, and areas of the tiles' cells (each
    place counted in one zone); no quicklook, as a figure of one zone would show only part of the region.
    """
    spec, out = plan.spec, plan.out
    t0 = time.perf_counter()
    tags = _mosaic_tags(plan)
    files = class_files(spec.filter, tags)
    bands = {key: [b.description for b in file_bands] for key, (file_bands, _, _) in files.items()}
    paths = output_paths(out)
    zones = sorted({t.epsg for t in plan.tiles})
    if plan.tiles_output:
        wanted = {key: path for epsg in zones for key, path in zone_files(out, epsg).items()}
        wanted["summary"] = paths["summary"]
    else:
        wanted = {k: paths[k] for k in MOSAIC_FILES}
    # Locked on the mosaic's name in both cases, so a --tiles run and a mosaic run of one --out never overlap.
    with file_set(wanted, lock=None if "map" in wanted else out) as tmp:
        if plan.tiles_output:
            for epsg in zones:
                write_tile_vrts([spec.tile_path(t) for t in plan.tiles if t.epsg == epsg], epsg, files, tmp, spec.filter,
                                folder=out.parent)
            areas = np.sum([r["areas"] for r in results], axis=0)
            method = "cell size of the tiles' UTM grids, each place counted in one zone (cell centres in its strip)"
        else:
            box, areas = _write_mosaic_cogs(plan, files, tmp)
            method = area_method(box)
            draw_quicklook(tmp["map"], tmp["filled"], tmp["quicklook"], name=spec.config.name, filtered=spec.filter,
                           model=tags.get("model"), credits=input_credits(spec.config))
            for key, text in class_styles(spec.filter).items():
                tmp[key].write_text(text)
        seconds["write"] = time.perf_counter() - t0
        seconds = {k: round(v, 3) for k, v in {**seconds, "total": sum(seconds.values())}.items()}
        summary = region_summary(plan, areas, seconds, {k: p.name for k, p in wanted.items()}, bands, method) | (guard or {})
        write_summary(tmp["summary"], summary)
    return summary


def _mosaic_tags(plan: RegionPlan) -> dict[str, str]:
    """A tile's tags (model, weights, version, ...) less those of the tile alone, plus the region's."""
    with rasterio.open(plan.spec.tile_path(plan.tiles[0])) as src:
        tags = src.tags()
    for key in ("created", "city", "inputs", "LCZ_COLOURS", "AREA_OR_POINT"):
        tags.pop(key, None)
    return {**tags, "region": plan.spec.config.name, "tiles": str(len(plan.tiles))}


def _write_mosaic_cogs(plan: RegionPlan, files: dict[str, Any], tmp: dict[str, Path]) -> tuple[GeoBox, np.ndarray]:
    """The tiles reprojected block by block onto the mosaic grid and written as the city's COGs; (grid, areas)."""
    box = mosaic_geobox(plan)
    tiles = []
    for tile in plan.tiles:
        path = plan.spec.tile_path(tile)
        with rasterio.open(path) as src:
            tiles.append((str(path), tuple(Geometry(shapely.box(*src.bounds), src.crs.wkt).to_crs(box.crs).boundingbox)))
    stack = blockwise_array(mosaic_block, MosaicPlan(box=box, tiles=tuple(tiles)),
                            f"lczmap-mosaic-{plan.spec.config.name}-{os.getpid()}", box.shape, MOSAIC_BLOCK,
                            N_CLASS_BANDS).astype(np.uint8)
    # threads here, or the worker's threads on a cluster
    return box, write_class_cogs(stack, box, files, tmp, Runner(desc="mosaic blocks"), area_band=LCZ_FILTER)


# ---- running it --------------------------------------------------------------------------------------

def map_region(plan: RegionPlan, *, client: Any = None, workers: int | None = None, threads: int | None = None,
               scheduler: str | None = None, progress: bool = True, strict_inputs: bool = False,
               on_tile: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Check the inputs once (`guard_region`), map every tile not yet finished, write the mosaic; returns its summary.

    Without a cluster the tiles run one after another here (their blocks on the threaded scheduler);
    with one, every tile is a task on a worker, which writes the tile itself. A failed tile fails the run
    after the others are done; finished tiles stay, so the same command resumes. The summary's `seconds`: `plan`
    (the guard's included), `tiles` (staging, inference and writing of the tiles), `write` (the mosaic) and `total`.
    """
    t0 = time.perf_counter()
    guard = guard_region(plan, strict_inputs)  # a refusal leaves nothing behind: the tiles folder is made after it
    seconds = {"plan": plan.plan_seconds + time.perf_counter() - t0}
    t0 = time.perf_counter()
    prepare_tiles(plan)
    done = sum(plan.spec.tile_path(t).exists() for t in plan.tiles)
    log.info("%s: %d tiles of %g km in %d UTM zone(s); %d already done", plan.spec.config.name, len(plan.tiles),
             plan.tile_km, len({t.epsg for t in plan.tiles}), done)
    results: list[dict[str, Any]] = []
    errors: list[str] = []

    def finished(result: dict[str, Any]) -> None:
        results.append(result)
        if on_tile is not None:
            on_tile(result)

    with runner(client, workers, threads, scheduler) as run:
        client = run.client
        if client is None:  # one tile after another here
            outcomes = ((f"tile {t.id}", functools.partial(map_tile, plan.spec, t)) for t in plan.tiles)
        else:
            futures = client.map(map_tile, [plan.spec] * len(plan.tiles), plan.tiles, pure=False,
                                 key=[f"lczmap-tile-{t.id}-{os.getpid()}" for t in plan.tiles])
            outcomes = _as_completed(futures)
        with tqdm(total=len(plan.tiles), desc="tiles", unit="tile", disable=not progress, leave=False) as bar:
            for name, result in outcomes:
                try:
                    finished(result())
                except LczmapError:  # bad input fails every tile alike: stop at the first
                    if client is not None:
                        client.cancel(futures)
                    raise
                except Exception as exc:  # noqa: BLE001  one tile's failure; the others go on
                    errors.append(f"{name}: {type(exc).__name__}: {exc}".splitlines()[0])
                bar.update()
        if errors:
            raise LczmapError(f"{len(errors)} of {len(plan.tiles)} tiles failed ({errors[0]}); finished tiles are kept: "
                              f"run the same command again to resume")
        seconds["tiles"] = time.perf_counter() - t0
        if client is not None:  # the mosaic is written by a worker too: the client never reads the map
            return client.submit(write_mosaic, plan, results, seconds, guard, pure=False).result()
        return write_mosaic(plan, results, seconds, guard)


def _as_completed(futures: list[Any]) -> Iterator[tuple[str, Callable[[], dict[str, Any]]]]:
    """(key, result getter) of each tile's future as it finishes; a future is released once its result is taken."""
    for future in as_completed(futures):
        yield future.key, future.result
        future.release()
