"""Turn a city's lazy class probabilities into LCZ Generator-style class bands and write them as COGs, block by block.

Every step works on one block of output cells at a time (a dask task), so memory does not grow with the map:
classification, the class-specific Gaussian filter (`map_overlap` with the filter's reach as halo) and the
filling of holes, the reprojection to a geographic CRS, the class-area reduction and the writing of the block
as a small GeoTIFF. The block files are then joined by a VRT and copied into Cloud-Optimized GeoTIFFs by GDAL,
which streams (it never holds the map whole); the VRT carries the colour table, class names and tags.

No-data convention, the same in every raster lczmap writes: value 0 means "no data" (nodata=0). Class bands
use codes 1-17, the cell-status band 1-3, and percentages are stored as percent + 1 (1-101, with the GDAL
offset -1 so that GDAL, QGIS and rasterio's scaling read percent).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import numpy as np
from odc.geo.geobox import GeoBox
from scipy.ndimage import gaussian_filter

from .classes import CODES, NODATA, N_CLASSES, lcz_classes

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
STATUS_NAMES = {STATUS_MAPPED: "mapped by the model", STATUS_FILLED: "filled by the filter", STATUS_MISSING: "no data"}
STATUS_COLOURS = {STATUS_MAPPED: (200, 200, 200), STATUS_FILLED: (230, 120, 20), STATUS_MISSING: (200, 40, 200)}

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
    import dask.array as da
    from dask.array.overlap import ensure_minimum_chunksize

    raw = da.map_blocks(_classify_block, probabilities, aoi[None], dtype=np.uint8,
                        chunks=((3,), *probabilities.chunks[1:]))  # lcz, chosen, aoi
    if not filter:
        return da.map_blocks(_status_block, raw, dtype=np.uint8, chunks=((N_CLASS_BANDS,), *raw.chunks[1:]))
    depth = filter_reach(resolution)
    # map_overlap needs blocks at least as wide as the halo; merge narrow edge blocks first (usually a no-op).
    raw = raw.rechunk({axis: ensure_minimum_chunksize(depth, raw.chunks[axis]) for axis in (1, 2)})
    return da.map_overlap(_filter_block, raw, depth={0: 0, 1: depth, 2: depth}, boundary={1: 0, 2: 0}, trim=False,
                          dtype=np.uint8, chunks=((N_CLASS_BANDS,), *raw.chunks[1:]), resolution=resolution, halo=depth)


def _classify_block(probabilities: np.ndarray, aoi: np.ndarray) -> np.ndarray:
    return np.stack([*classify(probabilities, aoi[0]), aoi[0].astype(np.uint8)])


def _filter_block(raw: np.ndarray, resolution: float, halo: int) -> np.ndarray:
    """(3, h + 2 halo, w + 2 halo) lcz, chosen, aoi -> (4, h, w) lcz, lczFilter, lczProbability, status."""
    lcz, aoi = raw[LCZ], raw[2].astype(bool)
    filtered = lcz_filter(lcz, resolution, fill=aoi)
    inner = (slice(halo, raw.shape[1] - halo), slice(halo, raw.shape[2] - halo))
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
    import dask.array as da

    return da.map_blocks(_percent_block, probabilities, aoi[None], dtype=np.uint8)


def _percent_block(probabilities: np.ndarray, aoi: np.ndarray) -> np.ndarray:
    valid = aoi[0] & ~np.isnan(probabilities).any(axis=0)
    return np.where(valid, to_percent(probabilities) + 1, NODATA).astype(np.uint8)


def output_geobox(geobox: GeoBox, crs: Any) -> GeoBox:
    """A grid in `crs` (e.g. EPSG:4326) covering `geobox` with square pixels of about the same ground size."""
    return geobox.to_crs(crs, resolution="auto")


def reproject_stack(bands: Any, src: GeoBox, dst: GeoBox) -> Any:
    """Reproject a lazy (n, H, W) uint8 stack nearest-neighbour onto `dst`, block by block (codes stay codes)."""
    from odc.geo.xr import wrap_xr, xr_reproject

    xx = wrap_xr(bands, src, nodata=NODATA, axis=1, dims=("band", "y", "x"))
    return xr_reproject(xx, dst, resampling="nearest", dst_nodata=NODATA).data


# ---- areas -----------------------------------------------------------------------------------------------

def cell_areas_km2(box: GeoBox) -> np.ndarray:
    """Area of one cell per row of `box` in km2: on the WGS 84 ellipsoid for a geographic grid, else the cell size.

    A geographic cell's area depends only on its latitude, so one geodesic polygon per row suffices.
    """
    h = box.shape[0]
    a = box.affine
    if not box.crs.geographic:
        return np.full(h, abs(a.a * a.e - a.b * a.d) / 1e6)
    from pyproj import Geod

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


# ---- writing ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Band:
    """One band of an output file: which band of the block files it copies, and how it is described."""

    source: int  # 1-based band of the block files
    description: str
    metadata: Mapping[str, str] | None = None
    palette: Mapping[int, tuple[int, int, int]] | None = None
    categories: Mapping[int, str] | None = None
    offset: float = 0.0


def write_block(data: np.ndarray, path: str, box: GeoBox, rows: slice, cols: slice, area_band: int,
                status_band: int = STATUS) -> np.ndarray:
    """Write one block's (n, h, w) uint8 bands to `path` (a deflated GeoTIFF); return its (status, code) area table.

    `box` is the whole output grid, the block its cells `rows` x `cols`; areas are of the class band `area_band`.
    """
    import rasterio

    sub = box[rows, cols]
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype="uint8", crs=box.crs.wkt, transform=sub.affine, nodata=NODATA, compress="deflate",
                       interleave="band") as dst:
        dst.write(data)
    return block_areas(data[area_band], data[status_band], cell_areas_km2(sub))


def write_blocks(stack: Any, box: GeoBox, folder: Path, run: Any, area_band: int) -> np.ndarray:
    """Compute and write every block of `stack` as a small GeoTIFF in `folder`; the summed (status, code) areas."""
    import dask

    folder.mkdir()
    starts = [np.cumsum((0, *c)) for c in stack.chunks[1:]]
    tasks = []
    for (_, i, j), block in np.ndenumerate(stack.to_delayed()):
        rows = slice(int(starts[0][i]), int(starts[0][i + 1]))
        cols = slice(int(starts[1][j]), int(starts[1][j + 1]))
        tasks.append(dask.delayed(write_block, pure=False)(block, str(folder / f"b{i}_{j}.tif"), box, rows, cols, area_band))
    return run(dask.delayed(np.sum)(tasks, axis=0))  # the reduction runs on the workers too


def class_vrt(box: GeoBox, blocks: Sequence[tuple[str, slice, slice]], bands: Sequence[Band],
              tags: Mapping[str, str]) -> str:
    """A GDAL VRT joining the block files into one dataset, with descriptions, colours, class names and tags.

    GDAL's COG driver copies all of it: tags, descriptions, band metadata, offsets and the colour table
    into the TIFF; category names and the raster attribute table into `<file>.aux.xml` (GTiff has no
    other place for them in GDAL 3.10).
    """
    a = box.affine
    out = [f'<VRTDataset rasterXSize="{box.shape[1]}" rasterYSize="{box.shape[0]}">',
           f"  <SRS>{escape(box.crs.wkt)}</SRS>",
           f"  <GeoTransform>{a.c!r}, {a.a!r}, {a.b!r}, {a.f!r}, {a.d!r}, {a.e!r}</GeoTransform>",
           _metadata(tags, "  ")]
    for i, band in enumerate(bands, start=1):
        out.append(f'  <VRTRasterBand dataType="Byte" band="{i}">')
        out.append(f"    <Description>{escape(band.description)}</Description>")
        out.append(f"    <NoDataValue>{NODATA}</NoDataValue>")
        if band.palette:
            out.append("    <ColorInterp>Palette</ColorInterp>")
            out.append("    <ColorTable>")
            out += [f'      <Entry c1="{r}" c2="{g}" c3="{b}" c4="{alpha}"/>'
                    for r, g, b, alpha in _palette_entries(band.palette)]
            out.append("    </ColorTable>")
        if band.categories:
            top = max(band.categories)
            out.append("    <CategoryNames>")
            out += [f"      <Category>{escape(band.categories.get(v, ''))}</Category>" for v in range(top + 1)]
            out.append("    </CategoryNames>")
            out.append(_attribute_table(band))
        if band.metadata:
            out.append(_metadata(band.metadata, "    "))
        if band.offset:
            out.append(f"    <Offset>{band.offset:g}</Offset>\n    <Scale>1</Scale>")
        for name, rows, cols in blocks:
            h, w = rows.stop - rows.start, cols.stop - cols.start
            out.append(f'    <SimpleSource><SourceFilename relativeToVRT="1">{escape(name)}</SourceFilename>'
                       f"<SourceBand>{band.source}</SourceBand>"
                       f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
                       f'<DstRect xOff="{cols.start}" yOff="{rows.start}" xSize="{w}" ySize="{h}"/></SimpleSource>')
        out.append("  </VRTRasterBand>")
    out.append("</VRTDataset>")
    return "\n".join(out) + "\n"


def _metadata(items: Mapping[str, str], indent: str) -> str:
    lines = "".join(f"{indent}  <MDI key={quoteattr(k)}>{escape(str(v))}</MDI>\n" for k, v in items.items())
    return f"{indent}<Metadata>\n{lines}{indent}</Metadata>"


def _palette_entries(palette: Mapping[int, tuple[int, int, int]]) -> list[tuple[int, int, int, int]]:
    top = max(palette)
    return [(*palette[v], 255) if v in palette else (0, 0, 0, 0) for v in range(top + 1)]


def _attribute_table(band: Band) -> str:
    """A thematic GDAL raster attribute table (value, name, colour) of a class band, for QGIS and GDAL."""
    fields = [("Value", 0, 5), ("Name", 2, 2), ("Red", 0, 6), ("Green", 0, 7), ("Blue", 0, 8), ("Alpha", 0, 9)]
    out = ['    <GDALRasterAttributeTable tableType="thematic">']
    out += [f'      <FieldDefn index="{i}"><Name>{n}</Name><Type>{t}</Type><Usage>{u}</Usage></FieldDefn>'
            for i, (n, t, u) in enumerate(fields)]
    named = sorted((v, n) for v, n in (band.categories or {}).items() if n)  # no row for no data
    for row, (value, name) in enumerate(named):
        r, g, b = (band.palette or {}).get(value, (0, 0, 0))
        out.append(f'      <Row index="{row}"><F>{value}</F><F>{escape(name)}</F><F>{r}</F><F>{g}</F><F>{b}</F><F>255</F></Row>')
    out.append("    </GDALRasterAttributeTable>")
    return "\n".join(out)


def translate_cog(vrt: Path, path: Path, resampling: str = "MODE", sidecar: Path | None = None) -> None:
    """Copy a VRT into a Cloud-Optimized GeoTIFF at `path` (deflate, overviews by `resampling`); GDAL streams it.

    GDAL puts what a GTiff cannot hold (category names, the attribute table) into `<path>.aux.xml`; that
    file is moved to `sidecar`, or removed.
    """
    from rasterio.shutil import copy

    pam = path.with_name(path.name + ".aux.xml")
    try:
        copy(str(vrt), str(path), driver="COG", COMPRESS="DEFLATE", PREDICTOR="NO", BLOCKSIZE=512,
             OVERVIEW_RESAMPLING=resampling, BIGTIFF="IF_SAFER", NUM_THREADS=1)
        if sidecar is not None:
            os.replace(pam, sidecar)
    finally:
        pam.unlink(missing_ok=True)


def lcz_band(source: int, description: str) -> Band:
    """A class band (codes 1-17) with the WUDAPT colours, class names and a metadata item per class."""
    classes = lcz_classes()
    return Band(source=source, description=description,
                palette={c.code: c.rgb for c in classes},
                categories={NODATA: "", **{c.code: f"LCZ {c.lcz} {c.name}" for c in classes}},
                metadata={"classes": "LCZ (Stewart & Oke 2012), codes 1-17 = LCZ 1-10, A-G; 0 = no data",
                          **{f"LCZ_{c.code}": f"LCZ {c.lcz} {c.name} {c.colour}" for c in classes}})


def status_band(source: int) -> Band:
    """The cell-status band: which cells the model mapped, which the filter filled, which have no class."""
    return Band(source=source, description="filled", palette=STATUS_COLOURS,
                metadata={"values": "0 outside the AOI, " + ", ".join(f"{k} {v}" for k, v in STATUS_NAMES.items())})


def colour_tag() -> str:
    """The WUDAPT colour table as a tag value, 'code:#rrggbb,...' (for files whose class bands cannot hold a palette).

    TIFF embeds a colour table only in single-band files (GDAL refuses it for multi-band ones), so the
    three-band LCZ Generator file carries its colours in this tag and in a QGIS style beside it.
    """
    return ",".join(f"{c.code}:{c.colour}" for c in lcz_classes())


def qgis_style(band: int) -> str:
    """A QGIS layer style (.qml) drawing class band `band` in the WUDAPT colours; QGIS applies `<stem>.qml` itself."""
    entries = "\n".join(
        f'        <paletteEntry value="{c.code}" color="{c.colour.lower()}" alpha="255" label={quoteattr(f"LCZ {c.lcz} {c.name}")}/>'
        for c in lcz_classes()
    )
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.28" styleCategories="Symbology">
  <pipe>
    <rasterrenderer type="paletted" band="{band}" opacity="1" alphaBand="-1" nodataColor="">
      <rasterTransparency/>
      <colorPalette>
{entries}
      </colorPalette>
    </rasterrenderer>
    <rasterresampler maxOversampling="2"/>
  </pipe>
</qgis>
"""
