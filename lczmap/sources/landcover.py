"""Categorical land-cover raster (ESA WorldCover, Korean NLCM, or any scheme via a CSV) as one numeric band.

The `landcover` band holds lczmap land-cover codes, ordered roughly from sealed to wet surfaces so that
the number itself carries some meaning for a network (NaN = nodata or a code the scheme does not map):

| code | lczmap class             | ESA WorldCover | Korean NLCM (level-1 of any level's code) |
|------|--------------------------|----------------|-------------------------------------------|
| 1    | built-up                 | 50             | 1xx urban / dry area                      |
| 2    | bare / sparse vegetation | 60             | 6xx barren                                |
| 3    | cropland                 | 40             | 2xx agricultural                          |
| 4    | grassland                | 30             | 4xx grassland                             |
| 5    | shrubland                | 20             | -                                         |
| 6    | tree cover               | 10             | 3xx forest                                |
| 7    | mangroves                | 95             | -                                         |
| 8    | herbaceous wetland       | 90             | 5xx wetland                               |
| 9    | moss and lichen          | 100            | -                                         |
| 10   | snow and ice             | 70             | -                                         |
| 11   | permanent water          | 80             | 7xx water                                 |

Any other scheme: `landcover_scheme: path/to/table.csv` with header `source_code,lczmap_code`.
The raster is reprojected with the mode of the source pixels when it is finer than the base grid
(e.g. WorldCover at high latitudes), nearest neighbour otherwise.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry
from rasterio.enums import Resampling

from ..errors import LczmapError
from ..grid import aoi_sample, usable_share
from .base import RasterInfo, Source, check_overlap, inspect_raster, warp

log = logging.getLogger(__name__)

LANDCOVER_CLASSES: dict[int, str] = {
    1: "built-up", 2: "bare / sparse vegetation", 3: "cropland", 4: "grassland", 5: "shrubland",
    6: "tree cover", 7: "mangroves", 8: "herbaceous wetland", 9: "moss and lichen", 10: "snow and ice",
    11: "permanent water",
}
WORLDCOVER: dict[int, int] = {50: 1, 60: 2, 40: 3, 30: 4, 20: 5, 10: 6, 95: 7, 90: 8, 100: 9, 70: 10, 80: 11}
# Korean national land-cover map: level-1 classes are the hundreds digit of level-1/2/3 codes (110, 111, ...).
_NLCM_LEVEL1 = {1: 1, 2: 3, 3: 6, 4: 4, 5: 8, 6: 2, 7: 11}
KOREA_NLCM: dict[int, int] = {code: _NLCM_LEVEL1[code // 100] for code in range(100, 800)}
SCHEMES = {"worldcover": WORLDCOVER, "esa-worldcover": WORLDCOVER, "korea": KOREA_NLCM, "nlcm": KOREA_NLCM}
# Source pixels finer than this share of a base pixel are many-to-one: take their mode.
_MODE_BELOW = 0.75


def scheme_table(scheme: str, search: tuple[Path, ...] = ()) -> tuple[str, dict[int, int]]:
    """(name, {source_code: lczmap_code}) for a named scheme or a CSV table (relative paths also tried under `search`)."""
    if scheme.lower() in SCHEMES:
        return scheme.lower(), SCHEMES[scheme.lower()]
    path = Path(scheme)
    if not path.is_absolute() and not path.exists():
        path = next((d / scheme for d in search if (d / scheme).exists()), path)
    if not path.exists():
        raise LczmapError(
            f"landcover_scheme '{scheme}': not a known scheme ({', '.join(sorted(SCHEMES))}) nor an existing CSV file"
        )
    return str(path), read_mapping_csv(path)


def read_mapping_csv(path: Path) -> dict[int, int]:
    """A `source_code,lczmap_code` table; lczmap codes must be in LANDCOVER_CLASSES."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LczmapError(f"{path}: cannot read the land-cover mapping table ({exc})") from None
    if not rows or not {"source_code", "lczmap_code"} <= set(rows[0]):
        raise LczmapError(f"{path}: land-cover mapping table needs the header 'source_code,lczmap_code'")
    table = {}
    for n, row in enumerate(rows, start=2):
        try:
            src, dst = int(row["source_code"]), int(row["lczmap_code"])
        except (TypeError, ValueError):
            raise LczmapError(f"{path}: line {n}: codes must be integers, got {row}") from None
        if dst not in LANDCOVER_CLASSES:
            raise LczmapError(f"{path}: line {n}: lczmap_code {dst} is not one of {sorted(LANDCOVER_CLASSES)}")
        table[src] = dst
    return table


class LandcoverSource(Source):
    """Categorical codes resampled (mode/nearest) to the base grid, then mapped through the scheme's table."""

    key = "landcover"
    bands = ("landcover",)

    def __init__(self, info: RasterInfo, scheme: str, table: dict[int, int], resampling: Resampling):
        self.info = info
        self.scheme = scheme
        self.resampling = resampling
        # Lookup table indexed by source code; NaN for codes the scheme does not map.
        self.lut = np.full(max(table) + 1, np.nan, dtype="float32")
        self.lut[list(table)] = list(table.values())

    def codes(self, geobox: GeoBox, resampling: Resampling | None = None) -> np.ndarray:
        """Raw source codes on `geobox` (-1 where the source has no data)."""
        nodata = self.info.nodata
        return warp(self.info.href, [1], geobox, resampling or self.resampling, "int32", src_nodata=nodata, dst_nodata=-1)[0]

    def read(self, geobox: GeoBox, extras: dict[str, np.ndarray] | None = None) -> np.ndarray:
        codes = self.codes(geobox)
        out = np.full((1, *codes.shape), np.nan, dtype="float32")
        known = (codes >= 0) & (codes < self.lut.size)
        out[0][known] = self.lut[codes[known]]
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "path": self.info.href,
            "crs": self.info.crs_label,
            "resolution_m": round(self.info.res_m, 2),
            "scheme": self.scheme,
            "resampling": self.resampling.name,
            "codes": {str(k): v for k, v in LANDCOVER_CLASSES.items()},
        }


def open_landcover(path: str | Path, scheme: str, aoi: Geometry, base: GeoBox, search: tuple[Path, ...] = ()) -> LandcoverSource:
    """Check the raster once and sample it coarsely over the AOI: refuse complex values, or codes none of which the
    scheme maps; its `usable_share` is that of the AOI with a code the scheme maps (see lczmap.stage.check_usable)."""
    info = inspect_raster(path, "land-cover raster")
    if info.dtype.startswith("complex"):  # complex64/128 and GDAL's complex_int16/32
        raise LczmapError(f"{path}: land-cover raster holds complex numbers ({info.dtype}); it must hold class codes")
    check_overlap(info, aoi, "land-cover raster")
    name, table = scheme_table(scheme, search)
    base_res = abs(base.resolution.x)
    resampling = Resampling.mode if info.res_m < _MODE_BELOW * base_res else Resampling.nearest
    source = LandcoverSource(info, name, table, resampling)
    coarse, in_aoi = aoi_sample(aoi, base)
    sample = source.codes(coarse, Resampling.nearest)
    present = set(np.unique(sample[sample >= 0]).tolist())
    unmapped = sorted(present - set(table))
    if present and len(unmapped) == len(present):
        raise LczmapError(
            f"{info.href}: none of the land-cover codes {unmapped[:10]} is in the '{name}' table; "
            f"set landcover_scheme (worldcover, korea, or a CSV of source_code,lczmap_code)"
        )
    if unmapped:
        log.warning("%s: codes %s are not in the '%s' table and become nodata", info.href, unmapped[:20], name)
    source.usable_share = usable_share(np.isin(sample, list(table)), in_aoi)
    source.unusable = f"nodata or a code outside the '{name}' table"
    return source
