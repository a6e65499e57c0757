"""Ground elevation and height above ground from a surface model alone, blockwise (a raster progressive morphological filter).

A surface model (the Copernicus DEM GLO-30, a lidar DSM) holds roofs and canopy; the networks expect height
above ground. Without a terrain model the ground is derived the way the simple morphological filter SMRF does
it (Pingel, Clarke & McBride 2013, ISPRS J. 77), on the raster itself:

1. Open (erode, then dilate) the surface with disks of radius 1, 2, ... up to `WINDOW_M` metres. An opening
   removes every object narrower than its disk and keeps planes, tilted ones included.
2. A cell is an object (not ground) where one opening step lowers the surface by more than the terrain could
   drop over that radius: `ELEVATION_THRESHOLD_M + SLOPE * radius` (SMRF's slope-scaled threshold).
3. A provisional ground is the largest opening plus the residual of the ground cells around it (surface minus
   opening), spread by normalised Gaussian convolution: the opening carries the terrain's trend under the
   objects, the residual its level (the opening alone is the lowest cell in reach, too low over noise).
4. As SMRF's last step, ground cells standing more than `ELEVATION_THRESHOLD_M` above the provisional ground
   (edges of roofs and canopy mixed into a cell) are dropped, and the ground is spread again from the rest.

Height above ground is `max(surface - ground, 0)`. Every step only looks a bounded distance away
(`margin_pixels`), so a block read with that margin on each side gives exactly the inner result of the whole
raster: the result never depends on the block layout. Cells outside the data (NaN) are ignored, never
filled: they stay NaN. Tuned and validated on one site only (Old Town Alexandria, lidar; README
"Height above ground").
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from skimage.morphology import disk

# Objects up to this radius (m) are removed: wider than most buildings (an 80 x 110 m block at the validation
# site, large halls elsewhere), small enough to follow hills.
WINDOW_M = 100.0
# SMRF's slope-scaled threshold: an opening step of radius r may lower ground by ELEVATION_THRESHOLD_M + SLOPE * r
# (on a tilted plane successive openings are equal; what SLOPE bounds is the terrain's convexity). A low SLOPE
# flags more of the blurred building edges that 10-30 m cells hold; hills of 200 m radius of curvature (10 m
# cells) or 600 m (30 m cells) still pass as ground.
SLOPE = 0.05
ELEVATION_THRESHOLD_M = 0.5
# Width (as a share of the largest disk radius) of the Gaussian that spreads the ground residual under objects.
SPREAD = 0.5
GAUSS_TRUNCATE = 3.0


def _radii(pixel_size_m: float) -> range:
    """Disk radii in pixels, 1 ... the first that reaches WINDOW_M (10 at 10 m, 4 at 30 m)."""
    return range(1, max(1, math.ceil(WINDOW_M / pixel_size_m)) + 1)


def _sigma(pixel_size_m: float) -> float:
    return SPREAD * _radii(pixel_size_m)[-1]


def margin_pixels(pixel_size_m: float) -> int:
    """Context (pixels, each side) a block needs for its result to equal the whole raster's.

    The largest opening looks 2 radii away; each of the two ground spreads then looks its Gaussian's reach further.
    """
    if not pixel_size_m > 0:
        raise ValueError(f"pixel size must be positive, got {pixel_size_m}")
    return 2 * _radii(pixel_size_m)[-1] + 2 * math.ceil(GAUSS_TRUNCATE * _sigma(pixel_size_m)) + 1


def _opening(surface: np.ndarray, radius: int) -> np.ndarray:
    """Grey opening with a disk; NaN cells (and outside the array) take no part; NaN where no data in reach."""
    footprint = disk(radius).astype(bool)
    eroded = ndimage.grey_erosion(np.where(np.isnan(surface), np.inf, surface), footprint=footprint,
                                  mode="constant", cval=np.inf)
    opened = ndimage.grey_dilation(np.where(np.isinf(eroded), -np.inf, eroded), footprint=footprint,
                                   mode="constant", cval=-np.inf)
    return np.where(np.isinf(opened), np.nan, opened)


def _spread(values: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    """Normalised convolution: Gaussian-weighted mean of `values` over cells with weight 1 (NaN where none in reach)."""
    filt = lambda a: ndimage.gaussian_filter(a, sigma, mode="constant", cval=0.0, truncate=GAUSS_TRUNCATE)  # noqa: E731
    total = filt(np.where(weights > 0, values, 0.0))
    norm = filt(weights)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 1e-6, total / norm, np.nan)


def _inner(a: np.ndarray, margin: int) -> np.ndarray:
    return a[margin : a.shape[0] - margin, margin : a.shape[1] - margin] if margin else a


def ground_mask(surface: np.ndarray, pixel_size_m: float) -> tuple[np.ndarray, np.ndarray]:
    """(ground, opened): True where a cell is ground by the progressive opening test; the largest opening."""
    z = surface.astype("float64")
    previous = z
    objects = np.zeros(z.shape, dtype=bool)
    for radius in _radii(pixel_size_m):
        opened = _opening(z, radius)
        threshold = ELEVATION_THRESHOLD_M + SLOPE * radius * pixel_size_m
        with np.errstate(invalid="ignore"):
            objects |= (previous - opened) > threshold
        previous = opened
    return np.isfinite(z) & ~objects, previous


def derive_ground(surface: np.ndarray, pixel_size_m: float, margin: int | None = None) -> np.ndarray:
    """Ground elevation (float32, m) of the inner block of `surface`, a surface model window (NaN = no data).

    `margin` rows and columns on each side are context only and are cut from the result; the default is
    `margin_pixels(pixel_size_m)`, which makes blockwise results equal the whole raster's. Pass 0 for a whole
    raster (outside it counts as no data). NaN where the surface is NaN.
    """
    margin = margin_pixels(pixel_size_m) if margin is None else margin
    if surface.ndim != 2 or min(surface.shape) <= 2 * margin:
        raise ValueError(f"surface of shape {surface.shape} has no inner block inside a margin of {margin} pixels")
    z = surface.astype("float64")
    ground, opened = ground_mask(z, pixel_size_m)
    base = np.where(np.isfinite(opened), opened, z)  # opened is NaN only where no data is in reach

    def spread_ground(cells: np.ndarray) -> np.ndarray:
        residual = _spread(z - base, cells.astype("float64"), _sigma(pixel_size_m))
        return base + np.where(np.isfinite(residual), residual, 0.0)

    provisional = spread_ground(ground)
    with np.errstate(invalid="ignore"):
        out = spread_ground(ground & (z - provisional <= ELEVATION_THRESHOLD_M))
    out = np.where(np.isfinite(z), np.minimum(out, z), np.nan)  # the ground is never above the surface
    return _inner(out, margin).astype("float32")


def height_above_ground(surface: np.ndarray, pixel_size_m: float, margin: int | None = None) -> np.ndarray:
    """Height above the derived ground (float32, m, >= 0) of the inner block; see `derive_ground` for `margin`."""
    margin = margin_pixels(pixel_size_m) if margin is None else margin
    ground = derive_ground(surface, pixel_size_m, margin)
    return np.maximum(_inner(surface, margin).astype("float32") - ground, np.float32(0))
