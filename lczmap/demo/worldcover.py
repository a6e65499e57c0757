"""Write the demo city's ESA WorldCover v200-style land-cover raster (EPSG:4326, 1/12000 degree) from the scene."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.warp import Resampling, reproject

from .dem import geographic_grid
from .sentinel2_safe import S2Products

WORLDCOVER_RESOLUTION = 1.0 / 12000.0
# Official WorldCover v200 legend colours.
WORLDCOVER_COLOURS = {
    10: (0, 100, 0), 20: (255, 187, 34), 30: (255, 255, 76), 40: (240, 150, 255), 50: (250, 0, 0),
    60: (180, 180, 180), 70: (240, 240, 240), 80: (0, 100, 200), 90: (0, 150, 160), 95: (0, 207, 117),
    100: (250, 230, 160),
}


def write_worldcover(path: Path, products: S2Products) -> None:
    """Majority cover of each 10 m pixel (built-up when roofs and pavement dominate), resampled by mode."""
    transform, shape = geographic_grid(products, WORLDCOVER_RESOLUTION)
    out = np.zeros(shape, np.uint8)
    reproject(
        products.worldcover10, out, src_transform=products.grid.transform, src_crs=products.grid.crs,
        dst_transform=transform, dst_crs="EPSG:4326", resampling=Resampling.mode, src_nodata=0, dst_nodata=0,
    )
    with rasterio.open(
        path, "w", driver="GTiff", width=shape[1], height=shape[0], count=1, dtype="uint8", crs="EPSG:4326",
        transform=transform, nodata=0, compress="deflate", tiled=True,
    ) as dst:
        dst.write(out, 1)
        dst.write_colormap(1, {0: (0, 0, 0, 0), **{k: (*v, 255) for k, v in WORLDCOVER_COLOURS.items()}})
        dst.set_band_description(1, "Map")
