"""Turn a city's class probabilities into LCZ Generator-style class bands (raw, Gaussian-filtered) and write them as COGs."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
from odc.geo.geobox import GeoBox
from rasterio.enums import Resampling
from rasterio.io import MemoryFile
from rasterio.warp import reproject
from rio_cogeo.cogeo import cog_translate
from rio_cogeo.profiles import cog_profiles
from scipy.ndimage import gaussian_filter

from .classes import CODES, NODATA, lcz_classes

# The LCZ Generator's class-specific filter (Demuzere et al. 2021): class -> (kernel radius, sigma) in metres.
FILTER_RADIUS_SIGMA_M: dict[int, tuple[float, float]] = {
    1: (200, 100),
    **{c: (300, 150) for c in (2, 3, 4, 5, 6, 7, 9)},
    8: (500, 250), 10: (500, 250),
    **{c: (200, 75) for c in (11, 12, 13, 14, 16)},
    15: (300, 150),
    17: (50, 25),
}
PROBABILITY_NODATA = 255  # in the probabilities file 0 % is a valid value


def classify(probabilities: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(17, H, W) probabilities (NaN = nodata) -> (codes 1-17 with 0 = nodata, chosen-class probability in %).

    Cells outside `mask` (the AOI) and cells without probabilities are nodata in both.
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


def lcz_filter(lcz: np.ndarray, resolution: float) -> np.ndarray:
    """The LCZ Generator's class-specific Gaussian filter of a class map (codes 1-17, 0 = nodata).

    Each class's binary mask is convolved with a normalised Gaussian kernel truncated at the class's
    radius; every mapped cell takes the class with the highest filtered value (ties: lower code).
    Nodata cells stay nodata and vote for nothing. Unlike the LCZ Generator we do not cut 500 m from
    the map edges afterwards: our output grid already extends to the AOI's bounding box, so edge
    effects stay at the edges of that box and nothing inside the AOI is dropped.
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
    out[lcz == NODATA] = NODATA
    return out


def output_geobox(geobox: GeoBox, crs: Any) -> GeoBox:
    """A grid in `crs` (e.g. EPSG:4326) covering `geobox` with square pixels of about the same ground size."""
    return geobox.to_crs(crs, resolution="auto")


def reproject_nearest(bands: np.ndarray, src: GeoBox, dst: GeoBox, nodata: int) -> np.ndarray:
    """Reproject (n, h, w) uint8 bands nearest-neighbour onto `dst` (class codes stay codes)."""
    out = np.full((bands.shape[0], *dst.shape), nodata, dtype=bands.dtype)
    reproject(
        bands, out, src_transform=src.affine, src_crs=src.crs.wkt, src_nodata=nodata,
        dst_transform=dst.affine, dst_crs=dst.crs.wkt, dst_nodata=nodata, resampling=Resampling.nearest,
    )
    return out


def write_cog(
    path: Path,
    data: np.ndarray,
    geobox: GeoBox,
    descriptions: Sequence[str],
    nodata: int,
    tags: Mapping[str, str] | None = None,
    band_tags: Sequence[Mapping[str, str]] | None = None,
) -> None:
    """Write (bands, h, w) uint8 as a Cloud-Optimized GeoTIFF (deflate, mode overviews) at `path`."""
    profile = {
        "driver": "GTiff", "dtype": "uint8", "count": data.shape[0], "height": data.shape[1], "width": data.shape[2],
        "crs": geobox.crs.wkt, "transform": geobox.affine, "nodata": nodata, "photometric": "MINISBLACK",
    }
    with MemoryFile() as memfile:
        with memfile.open(**profile) as dst:
            dst.write(data)
            for i, text in enumerate(descriptions, start=1):
                dst.set_band_description(i, text)
            dst.update_tags(**dict(tags or {}))
            for i, btags in enumerate(band_tags or [], start=1):
                dst.update_tags(i, **btags)
        with memfile.open() as src:
            cog_translate(
                src, str(path), cog_profiles.get("deflate"), nodata=nodata, overview_resampling="mode",
                in_memory=True, quiet=True, forward_band_tags=True,
            )


def colour_tag() -> str:
    """The WUDAPT colour table as a tag value, 'code:#rrggbb,...'.

    TIFF embeds a colour table only in single-band files (GDAL refuses it for multi-band ones), so the
    multi-band LCZ map carries its colours in this tag, in a QGIS style beside it and in the quicklook.
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

