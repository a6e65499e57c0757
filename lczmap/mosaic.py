"""Turn lazy class probabilities into LCZ Generator-style class bands, and region tiles into one grid, block by block.

Every step works on one block of output cells at a time (a dask task), so memory does not grow with the map:
classification, the class-specific Gaussian filter (`map_overlap` with the filter's reach as halo) and the
filling of holes, the reprojection to a geographic CRS, the class-area reduction, and a region's tiles
reprojected onto its mosaic grid (`mosaic_block`). lczmap.outputs writes the blocks as files.

No-data convention, the same in every raster lczmap writes: value 0 means "no data" (nodata=0). Class bands
use codes 1-17, the cell-status band 1-3, and percentages are stored as percent + 1 (1-101, with the GDAL
offset -1 so that GDAL, QGIS and rasterio's scaling read percent).
"""

from __future__ import annotations

import math
from typing import Any

import dask.array as da
import numpy as np
import rasterio
from dask.array.overlap import ensure_minimum_chunksize
from odc.geo.crs import CRS
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry
from odc.geo.xr import wrap_xr, xr_reproject
from pyproj import Geod
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from scipy.ndimage import gaussian_filter

from .classes import CODES, NODATA, N_CLASSES, lcz_classes
from .plan import MosaicPlan, PredictPlan, RegionPlan
from .stage import blockwise_array

# The LCZ Generator's class-specific filter (Demuzere et al. 2021): class -> (kernel radius, sigma) in metres.
FILTER_RADIUS_SIGMA_M: dict[int, tuple[float, float]] = {
    1: (200, 100),
    **{c: (300, 150) for c in (2, 3, 4, 5, 6, 7, 9)},
    8: (500, 250), 10: (500, 250),
    **{c: (200, 75) for c in (11, 12, 13, 14, 16)},
    15: (300, 150),
    17: (50, 25),
}

# The cell-status band (`<stem>_filled.tif`): why each cell of the delivered band has the value it has.
STATUS_OUTSIDE = 0  # outside the AOI (no data)
STATUS_MAPPED = 1  # classified by the model
STATUS_FILLED = 2  # no prediction; the Gaussian filter gave it the class of its mapped neighbours
STATUS_MISSING = 3  # no prediction and no mapped neighbour within the filter's reach: no class
STATUS_COLOURS = {STATUS_MAPPED: (200, 200, 200), STATUS_FILLED: (230, 120, 20), STATUS_MISSING: (200, 40, 200)}

# Pixel size of the global LCZ map (Demuzere et al. 2022), about 100 m at the equator: a region's mosaic in EPSG:4326.
GLOBAL_LCZ_DEGREES = 0.000898315284120171

# Band layout of the blockwise class stack (before the optional probability bands).
LCZ, LCZ_FILTER, LCZ_PROBABILITY, STATUS = range(4)
N_CLASS_BANDS = 4


def classify(probabilities: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(17, h, w) probabilities (NaN = nodata) -> (codes 1-17 with 0 = nodata, chosen-class probability in %).

    Cells outside `mask` (the AOI) and cells without probabilities are nodata in both; the chosen class's
    probability is the largest of 17 and so at least 6 %, never 0.
    """
    valid = mask & ~np.isnan(probabilities).any(axis=0)
    filled = np.where(valid, probabilities, 0.0)
    lcz = np.where(valid, filled.argmax(axis=0) + 1, NODATA).astype(np.uint8)
    chosen = np.where(valid, to_percent(filled.max(axis=0)), NODATA).astype(np.uint8)
    return lcz, chosen


def to_percent(probabilities: np.ndarray) -> np.ndarray:
    """Probabilities 0-1 -> uint8 percent, rounded."""
    return np.clip(np.rint(np.nan_to_num(probabilities) * 100), 0, 100).astype(np.uint8)


def filter_kernel_px(code: int, resolution: float) -> tuple[float, int]:
    """(sigma, truncation radius) in output pixels of a class's Gaussian kernel at `resolution` metres."""
    radius_m, sigma_m = FILTER_RADIUS_SIGMA_M[code]
    return sigma_m / resolution, math.ceil(radius_m / resolution - 1e-9)


def filter_reach(resolution: float) -> int:
    """How far (in cells) the widest class kernel reaches: the halo a block needs for an exact filter."""
    return max(filter_kernel_px(code, resolution)[1] for code in CODES)


def lcz_filter(lcz: np.ndarray, resolution: float, fill: np.ndarray | None = None) -> np.ndarray:
    """The LCZ Generator's class-specific Gaussian filter of a class map (codes 1-17, 0 = nodata).

    Each class's binary mask is convolved with a normalised Gaussian kernel truncated at the class's
    radius; every mapped cell takes the class with the highest filtered value (ties: lower code).
    Nodata cells vote for nothing; they stay nodata, except those in `fill` (the AOI), which take the
    class the filter gives them from their mapped neighbours, if any lies within reach of its class's
    kernel. Beyond the array the map counts as nodata (zero padding), so a block filtered with a halo of
    `filter_reach` cells equals the same cells of the whole map filtered at once. Unlike the LCZ
    Generator we do not cut 500 m from the map edges: the map covers the AOI only.
    """
    best = np.zeros(lcz.shape, np.float32)
    out = np.zeros(lcz.shape, np.uint8)
    for code in CODES:
        mask = lcz == code
        if not mask.any():
            continue
        sigma, radius = filter_kernel_px(code, resolution)
        smooth = gaussian_filter(mask.astype(np.float32), sigma, radius=radius, mode="constant", cval=0.0)
        better = smooth > best
        best[better] = smooth[better]
        out[better] = code
    keep = lcz == NODATA if fill is None else (lcz == NODATA) & ~fill
    out[keep] = NODATA
    return out


# ---- the blockwise graph ---------------------------------------------------------------------------------

def class_stack(probabilities: Any, aoi: Any, resolution: float, filter: bool = True) -> Any:
    """(4, H, W) uint8 dask array `lcz, lczFilter, lczProbability, status` from lazy (17, H, W) probabilities.

    `aoi` is a lazy (H, W) bool array chunked like the probabilities. Without `filter`, `lczFilter` is
    the raw class band (no filling). Classification runs per block; the filter per block with a halo of
    the filter's reach (zero beyond the map, as the whole-map filter pads). Two block layers and the halo
    exchange: the graph stays small per block (it lives on the client).
    """
    raw = da.map_blocks(_classify_block, probabilities, aoi[None], dtype=np.uint8,
                        chunks=((3,), *probabilities.chunks[1:]))  # lcz, chosen, aoi
    if not filter:
        return da.map_blocks(_status_block, raw, dtype=np.uint8, chunks=((N_CLASS_BANDS,), *raw.chunks[1:]))
    # The halo per axis: the filter's reach, or the map's size where the map is narrower (a map of a few cells):
    # beyond the map everything is zero either way, the halo's padding or the filter's own.
    depth = {axis: min(filter_reach(resolution), raw.shape[axis]) for axis in (1, 2)}
    # map_overlap needs blocks at least as wide as the halo; merge narrow edge blocks first (usually a no-op).
    raw = raw.rechunk({axis: ensure_minimum_chunksize(depth[axis], raw.chunks[axis]) for axis in (1, 2)})
    return da.map_overlap(_filter_block, raw, depth={0: 0, **depth}, boundary={1: 0, 2: 0}, trim=False,
                          dtype=np.uint8, chunks=((N_CLASS_BANDS,), *raw.chunks[1:]), resolution=resolution,
                          halo=(depth[1], depth[2]))


def aoi_array(plan: PredictPlan) -> Any:
    """Lazy (H, W) bool AOI of a plan's output grid, rasterised per block (chunked like its probabilities)."""
    return blockwise_array(_aoi_block, plan, f"lczmap-aoi-{plan.key}", plan.grid.output.shape, plan.block, 1)[0] > 0


def _aoi_block(plan: PredictPlan, rows: slice, cols: slice) -> np.ndarray:
    return plan.aoi_block(rows, cols).astype(np.float32)[None]


def _classify_block(probabilities: np.ndarray, aoi: np.ndarray) -> np.ndarray:
    return np.stack([*classify(probabilities, aoi[0]), aoi[0].astype(np.uint8)])


def _filter_block(raw: np.ndarray, resolution: float, halo: tuple[int, int]) -> np.ndarray:
    """(3, h + 2 halo_y, w + 2 halo_x) lcz, chosen, aoi -> (4, h, w) lcz, lczFilter, lczProbability, status."""
    lcz, aoi = raw[LCZ], raw[2].astype(bool)
    filtered = lcz_filter(lcz, resolution, fill=aoi)
    inner = (slice(halo[0], raw.shape[1] - halo[0]), slice(halo[1], raw.shape[2] - halo[1]))
    status = cell_status(lcz[inner], filtered[inner], aoi[inner])
    return np.stack([lcz[inner], filtered[inner], raw[1][inner], status])


def _status_block(raw: np.ndarray) -> np.ndarray:
    lcz, aoi = raw[LCZ], raw[2].astype(bool)
    return np.stack([lcz, lcz, raw[1], cell_status(lcz, lcz, aoi)])


def cell_status(lcz: np.ndarray, delivered: np.ndarray, aoi: np.ndarray) -> np.ndarray:
    """Status band: 0 outside the AOI, 1 mapped by the model, 2 filled by the filter, 3 without class."""
    return np.select([~aoi, lcz > 0, delivered > 0], [STATUS_OUTSIDE, STATUS_MAPPED, STATUS_FILLED],
                     STATUS_MISSING).astype(np.uint8)


def probability_stack(probabilities: Any, aoi: Any) -> Any:
    """(17, H, W) uint8 percent + 1 of every class (0 = no data: outside the AOI or not mapped), lazily."""
    return da.map_blocks(_percent_block, probabilities, aoi[None], dtype=np.uint8)


def _percent_block(probabilities: np.ndarray, aoi: np.ndarray) -> np.ndarray:
    valid = aoi[0] & ~np.isnan(probabilities).any(axis=0)
    return np.where(valid, to_percent(probabilities) + 1, NODATA).astype(np.uint8)


def output_geobox(geobox: GeoBox, crs: Any) -> GeoBox:
    """A grid in `crs` (e.g. EPSG:4326) covering `geobox` with square pixels of about the same ground size."""
    return geobox.to_crs(crs, resolution="auto")


def reproject_stack(bands: Any, src: GeoBox, dst: GeoBox) -> Any:
    """Reproject a lazy (n, H, W) uint8 stack nearest-neighbour onto `dst`, block by block (codes stay codes)."""
    xx = wrap_xr(bands, src, nodata=NODATA, axis=1, dims=("band", "y", "x"))
    return xr_reproject(xx, dst, resampling="nearest", dst_nodata=NODATA).data


def mosaic_geobox(plan: RegionPlan) -> GeoBox:
    """The mosaic's grid: the region's bounds in the mosaic CRS, at GLOBAL_LCZ_DEGREES (scaled by resolution) or metres."""
    crs = CRS(plan.crs)
    res = GLOBAL_LCZ_DEGREES * plan.spec.resolution / 100.0 if crs.geographic else plan.spec.resolution
    bounds = None
    for tile in plan.tiles:
        b = Geometry(tile.delivered(), tile.crs).to_crs(crs).boundingbox
        bounds = b if bounds is None else (min(bounds[0], b[0]), min(bounds[1], b[1]), max(bounds[2], b[2]), max(bounds[3], b[3]))
    return GeoBox.from_bbox(bounds, crs, resolution=res)


def mosaic_block(plan: MosaicPlan, rows: slice, cols: slice) -> np.ndarray:
    """One block of a region's mosaic: the (4, h, w) class bands of every tile COG that reaches it, warped by GDAL
    (nearest neighbour) onto the block; a cell comes from the tile that holds it (status > 0), the later tile where
    two do (the one-cell overlap at a zone edge), so a cell's bands always come from one tile."""
    sub = plan.box[rows, cols]
    left, bottom, right, top = sub.boundingbox
    out = np.zeros((N_CLASS_BANDS, *sub.shape), np.uint8)
    for path, (w, s, e, n) in plan.tiles:
        if w >= right or e <= left or s >= top or n <= bottom:
            continue
        with rasterio.open(path) as src, WarpedVRT(src, crs=sub.crs.wkt, transform=sub.affine, width=sub.shape[1],
                                                  height=sub.shape[0], resampling=Resampling.nearest, nodata=0) as vrt:
            new = vrt.read()
        inside = new[STATUS] != 0
        out[:, inside] = new[:, inside]
    return out


# ---- areas -----------------------------------------------------------------------------------------------

def cell_areas_km2(box: GeoBox) -> np.ndarray:
    """Area of one cell per row of `box` in km2: on the WGS 84 ellipsoid for a geographic grid, else the cell size.

    A geographic cell's area depends only on its latitude, so one geodesic polygon per row suffices.
    """
    h = box.shape[0]
    a = box.affine
    if not box.crs.geographic:
        return np.full(h, abs(a.a * a.e - a.b * a.d) / 1e6)
    geod = Geod(ellps="WGS84")
    left, width = a.c, abs(a.a)
    tops = a.f + a.e * np.arange(h)
    return np.array([abs(geod.polygon_area_perimeter([left, left + width, left + width, left],
                                                     [t, t, t + a.e, t + a.e])[0]) for t in tops]) / 1e6


def area_method(box: GeoBox) -> str:
    """How `cell_areas_km2` measures the cells of `box`, for a summary."""
    if box.crs.geographic:
        return "cell areas on the WGS 84 ellipsoid, per row of the written grid"
    return "cell size of the written grid"


def block_areas(delivered: np.ndarray, status: np.ndarray, row_km2: np.ndarray) -> np.ndarray:
    """(4 statuses, 18 codes) areas in km2 of one block, each row of cells weighted by its cell area."""
    index = status.astype(np.int64) * (N_CLASSES + 1) + delivered
    weights = np.broadcast_to(row_km2[:, None], delivered.shape)
    return np.bincount(index.ravel(), weights.ravel(), minlength=4 * (N_CLASSES + 1)).reshape(4, N_CLASSES + 1)


def area_summary(areas: np.ndarray) -> dict[str, Any]:
    """Summary entries from the summed (status, code) area table of the delivered band (km2, shares of the AOI)."""
    inside = areas[1:]  # statuses 1-3: inside the AOI
    per_code = inside.sum(axis=0)
    aoi_km2 = float(inside.sum())
    mapped = float(per_code[1:].sum())
    classes = {
        str(c.code): {
            "lcz": c.lcz, "name": c.name, "km2": round(float(per_code[c.code]), 4),
            "percent": round(100.0 * per_code[c.code] / mapped, 2) if mapped else 0.0,
        }
        for c in lcz_classes()
    }
    share = (lambda v: round(float(v) / aoi_km2, 4)) if aoi_km2 else (lambda v: 1.0)
    return {
        "classes": classes,
        "mapped_km2": round(mapped, 4),
        "aoi_km2": round(aoi_km2, 4),
        "nodata_share": share(per_code[NODATA]),
        "filled_share": share(areas[STATUS_FILLED, 1:].sum()) if aoi_km2 else 0.0,
    }
