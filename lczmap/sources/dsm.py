"""Surface model (any GeoTIFF, any CRS) as one band of height above ground: DSM - DTM, derived, or as given."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry
from rasterio.enums import Resampling

from ..errors import LczmapError
from ..grid import BASE_RESOLUTION, aoi_sample, usable_share
from ..ground import WINDOW_M, height_above_ground, margin_pixels
from .base import (RasterInfo, Source, check_overlap, inspect_raster, read_padded, warp,
                   warp_array)

# What a DSM given without a DTM holds (city.yaml `dsm_height`, `--dsm-height`): "derive", a surface model (roofs and
# canopy on the terrain, as GLO-30), whose ground is derived (lczmap.ground) and the band is the height above it;
# "given", height above ground already (a normalised DSM), used as it is.
HEIGHT_MODES = ("derive", "given")
DEFAULT_HEIGHT = "derive"
# A DSM whose pixels are smaller than this share of a grid pixel (lidar) is averaged onto the grid and filtered
# there; coarser ones (GLO-30) are filtered on their own pixels and the height resampled, which is better and
# cheaper than filtering an upsampled DSM (README "Height above ground").
FINER_THAN_GRID = 0.8
# Own pixels read beyond a window's footprint, so that bilinear resampling of the height has its neighbours.
_EDGE_PIXELS = 2


class DsmSource(Source):
    """DSM (and optional DTM) as height above ground on the base grid.

    With a DTM: DSM - DTM, each bilinearly resampled. Without one, `height` says what the DSM holds: "derive" runs
    the ground filter on each window padded by the filter's margin, so values do not depend on the windows;
    "given" resamples it bilinearly as it is.
    """

    key = "dsm"
    bands = ("dsm",)

    def __init__(self, dsm: RasterInfo, dtm: RasterInfo | None, height: str = DEFAULT_HEIGHT):
        if height not in HEIGHT_MODES:
            raise ValueError(f"height must be one of {', '.join(HEIGHT_MODES)}, got {height!r}")
        self.dsm = dsm
        self.dtm = dtm
        self.height = height

    def read(self, geobox: GeoBox, extras: dict[str, np.ndarray] | None = None) -> np.ndarray:
        if self.dtm is not None:
            surface = warp(self.dsm.href, [1], geobox, Resampling.bilinear)
            return surface - warp(self.dtm.href, [1], geobox, Resampling.bilinear)
        if self.height == "given":
            return warp(self.dsm.href, [1], geobox, Resampling.bilinear)
        if self.filtered_on_grid:
            return self._derived_on_grid(geobox)[None]
        return self._derived_on_own_pixels(geobox)[None]

    @property
    def filtered_on_grid(self) -> bool:
        return self.dsm.res_m < FINER_THAN_GRID * BASE_RESOLUTION

    def _derived_on_grid(self, geobox: GeoBox) -> np.ndarray:
        """A fine DSM averaged onto `geobox` grown by the filter's margin, filtered there, the margin cut off."""
        pixel_m = abs(geobox.resolution.x)
        margin = margin_pixels(pixel_m)
        surface = warp(self.dsm.href, [1], geobox.pad(margin), Resampling.average)[0]
        if np.isnan(surface).all():
            return surface[margin:-margin, margin:-margin]
        return height_above_ground(surface, pixel_m, margin)

    def _derived_on_own_pixels(self, geobox: GeoBox) -> np.ndarray:
        """The DSM's own pixels under `geobox` (plus the filter's margin) filtered, the height resampled bilinearly."""
        margin = margin_pixels(self.dsm.res_m)
        footprint = tuple(geobox.extent.to_crs(self.dsm.crs, resolution="auto").boundingbox)
        surface, transform = read_padded(self.dsm.href, 1, footprint, _EDGE_PIXELS + margin)
        if np.isnan(surface).all():
            return np.full(geobox.shape, np.nan, dtype="float32")
        height = height_above_ground(surface, self.dsm.res_m, margin)
        inner = transform * Affine.translation(margin, margin)
        return warp_array(height, inner, self.dsm.crs, geobox, Resampling.bilinear)

    def height_method(self) -> str:
        """How the band's height above ground was obtained, in words (the report's `height`)."""
        if self.dtm is not None:
            return "dsm - dtm"
        if self.height == "given":
            return "given: the DSM is height above ground (dsm_height: given)"
        grid = f"on the DSM averaged to the {BASE_RESOLUTION:.0f} m grid" if self.filtered_on_grid else (
            f"on the DSM's own {self.dsm.res_m:.0f} m pixels, the height resampled bilinearly")
        return f"derived: SMRF raster filter (lczmap.ground), window {WINDOW_M:.0f} m, {grid}"

    def describe(self) -> dict[str, Any]:
        out = {
            "path": self.dsm.href,
            "crs": self.dsm.crs_label,
            "resolution_m": round(self.dsm.res_m, 2),
            "band": "height above ground, m",
            "height": self.height_method(),
        }
        if self.dtm is not None:
            out.update(dtm=self.dtm.href, dtm_crs=self.dtm.crs_label, dtm_resolution_m=round(self.dtm.res_m, 2))
        return out


def open_dsm(dsm: str | Path, dtm: str | Path | None, aoi: Geometry, height: str | None = None,
             base: GeoBox | None = None) -> DsmSource:
    """Check the DSM (and DTM) once: readable rasters of real heights, with a horizontal CRS, that overlap the AOI.

    `height` (HEIGHT_MODES, None: DEFAULT_HEIGHT) says what a DSM without a DTM holds; "given" with a DTM
    contradicts it and is refused. With the `base` grid, the share of the AOI with a height (a value in the DSM,
    and the DTM if given) is sampled (`usable_share`, see lczmap.stage.check_usable).
    """
    dsm_info = _surface(dsm, "DSM", aoi)
    if dtm is not None and height == "given":
        raise LczmapError(f"{dtm}: a DTM is given, but dsm_height: given says the DSM already is height above ground; "
                          "drop one of them")
    source = DsmSource(dsm_info, _surface(dtm, "DTM", aoi) if dtm is not None else None, height or DEFAULT_HEIGHT)
    if base is not None:
        coarse, in_aoi = aoi_sample(aoi, base)
        usable = np.ones(coarse.shape, bool)
        for info in filter(None, (source.dsm, source.dtm)):
            usable &= np.isfinite(warp(info.href, [1], coarse, Resampling.nearest)[0])
        source.usable_share = usable_share(usable, in_aoi)
        source.unusable = "nodata or NaN" if source.dtm is None else "nodata or NaN in the DSM or the DTM"
    return source


def _surface(path: str | Path, what: str, aoi: Geometry) -> RasterInfo:
    info = inspect_raster(path, what)
    if info.dtype.startswith("complex"):  # complex64/128 and GDAL's complex_int16/32
        raise LczmapError(f"{path}: {what} holds complex numbers ({info.dtype}); a surface model must hold real "
                          "heights in metres")
    check_overlap(info, aoi, what)
    return info
