"""Surface model (any GeoTIFF, any CRS) as one band: height above ground when a terrain model is given, else elevation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry
from rasterio.enums import Resampling

from .base import RasterInfo, Source, check_overlap, inspect_raster, warp


class DsmSource(Source):
    """DSM (and optional DTM), each bilinearly resampled to the base grid; the band is DSM - DTM when a DTM is given."""

    key = "dsm"
    bands = ("dsm",)

    def __init__(self, dsm: RasterInfo, dtm: RasterInfo | None):
        self.dsm = dsm
        self.dtm = dtm

    def read(self, geobox: GeoBox, extras: dict[str, np.ndarray] | None = None) -> np.ndarray:
        surface = warp(self.dsm.href, [1], geobox, Resampling.bilinear)
        if self.dtm is None:
            return surface
        return surface - warp(self.dtm.href, [1], geobox, Resampling.bilinear)

    def describe(self) -> dict[str, Any]:
        out = {
            "path": self.dsm.href,
            "crs": self.dsm.crs_label,
            "resolution_m": round(self.dsm.res_m, 2),
            "band": "height above ground (DSM - DTM), m" if self.dtm else "surface elevation (DSM), m",
        }
        if self.dtm is not None:
            out.update(dtm=self.dtm.href, dtm_crs=self.dtm.crs_label, dtm_resolution_m=round(self.dtm.res_m, 2))
        return out


def open_dsm(dsm: str | Path, dtm: str | Path | None, aoi: Geometry) -> DsmSource:
    """Check the DSM (and DTM) once: readable rasters with a CRS that overlap the AOI."""
    dsm_info = inspect_raster(dsm, "DSM")
    check_overlap(dsm_info, aoi, "DSM")
    dtm_info = None
    if dtm is not None:
        dtm_info = inspect_raster(dtm, "DTM")
        check_overlap(dtm_info, aoi, "DTM")
    return DsmSource(dsm_info, dtm_info)
