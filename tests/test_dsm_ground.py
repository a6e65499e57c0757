"""Staging a DSM without a DTM: the band is height above a derived ground (lczmap.ground), whatever the blocks.

Synthetic surfaces: a tilted plane with flat-roofed boxes, written as GeoTIFFs the way real DSMs come (GLO-30's
1 arc-second EPSG:4326 grid, 30 m and 10 m UTM, 2 m lidar), staged onto a 10 m UTM grid.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from odc.geo.geobox import GeoBox
from odc.geo.geom import box
from pyproj import Transformer
from rasterio.enums import Resampling
from rasterio.transform import from_origin

from lczmap import ground
from lczmap.aoi import read_aoi
from lczmap.cli import cli
from lczmap.config import load_city_config
from lczmap.errors import LczmapError
from lczmap.grid import city_grid
from lczmap.sources import open_dsm
from lczmap.sources.base import warp
from lczmap.stage import build_report, plan_stage

pytestmark = pytest.mark.filterwarnings("ignore:Dataset has no geotransform")

CRS = "EPSG:32633"
X0, Y0, N = 400_000, 5_800_000, 180  # the staging grid: 1.8 km of 10 m pixels
GRID = GeoBox((N, N), Affine(10, 0, X0, 0, -10, Y0), CRS)
# The surface reaches 600 m beyond the grid (the filter's context) except in the east, where it stops 300 m inside
# the grid: the band is nodata there, and the blocks along that edge see the edge of the data.
EXTENT = (X0 - 600, Y0 - N * 10 - 600, X0 + N * 10 - 300, Y0 + 600)
# Boxes: (centre x, centre y, half width, height), all m; no object wider than the filter's 200 m window.
BOXES = [(X0 + 300, Y0 - 300, 60, 15.0), (X0 + 900, Y0 - 500, 45, 9.0), (X0 + 500, Y0 - 1200, 75, 24.0),
         (X0 + 1200, Y0 - 1300, 30, 6.0)]


def terrain(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return 120 + 0.03 * (x - X0) - 0.02 * (y - Y0)  # a 3.6 % slope


def true_height(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    out = np.zeros(np.broadcast(x, y).shape)
    for cx, cy, half, h in BOXES:
        out[(np.abs(x - cx) < half) & (np.abs(y - cy) < half)] = h
    return out


def write_dsm(path: Path, crs: str, pixel: float) -> Path:
    """The surface sampled at the centres of a north-up grid of `pixel` (m; degrees in EPSG:4326) over EXTENT."""
    left, bottom, right, top = EXTENT
    if crs != CRS:
        left, bottom, right, top = Transformer.from_crs(CRS, crs, always_xy=True).transform_bounds(*EXTENT)
    width, height = round((right - left) / pixel), round((top - bottom) / pixel)
    transform = from_origin(left, top, pixel, pixel)
    rows, cols = np.mgrid[0:height, 0:width]
    x, y = transform * (cols + 0.5, rows + 0.5)
    if crs != CRS:
        x, y = Transformer.from_crs(crs, CRS, always_xy=True).transform(x, y)
    surface = (terrain(x, y) + true_height(x, y)).astype("float32")
    surface[:3, :3] = -9999  # a few nodata cells in a corner
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=1, dtype="float32", crs=crs,
                       transform=transform, nodata=-9999) as dst:
        dst.write(surface, 1)
    return path


def grid_centres(geobox: GeoBox) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.mgrid[0 : geobox.shape[0], 0 : geobox.shape[1]]
    return geobox.affine * (cols + 0.5, rows + 0.5)


def on_raster(path: Path, x: np.ndarray, y: np.ndarray, grow: float) -> np.ndarray:
    """Grid cells whose centre lies on the raster grown by `grow` of its pixels on each side."""
    with rasterio.open(path) as src:
        col, row = ~src.transform * Transformer.from_crs(CRS, src.crs, always_xy=True).transform(x, y)
        return (col > -grow) & (col < src.width + grow) & (row > -grow) & (row < src.height + grow)


def inside(x: np.ndarray, y: np.ndarray, by: float) -> np.ndarray:
    """Cells more than `by` m inside a box (by < 0: within -by m outside one)."""
    out = np.zeros(x.shape, dtype=bool)
    for cx, cy, half, _ in BOXES:
        out |= (np.abs(x - cx) < half - by) & (np.abs(y - cy) < half - by)
    return out


def read_in_blocks(source, rows: int, cols: int) -> np.ndarray:
    out = np.full(GRID.shape, np.nan, dtype="float32")
    for r in range(0, N, rows):
        for c in range(0, N, cols):
            window = (slice(r, min(r + rows, N)), slice(c, min(c + cols, N)))
            out[window] = source.read(GRID[window])[0]
    return out


def filtered_whole_and_sampled(path: Path, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The reference: the ground filter run once on the whole raster (no data beyond its edge), then textbook
    bilinear interpolation at the grid centres (x, y); NaN where a neighbour is missing."""
    with rasterio.open(path) as src:
        pixel_m = source_pixel_m(path)
        margin = ground.margin_pixels(pixel_m)
        surface = np.pad(src.read(1, masked=True).filled(np.nan), margin, constant_values=np.nan)
        height = ground.height_above_ground(surface, pixel_m, margin).astype("float64")
        col, row = ~src.transform * Transformer.from_crs(CRS, src.crs, always_xy=True).transform(x, y)
    col, row = col - 0.5, row - 0.5
    c0, r0 = np.floor(col).astype(int), np.floor(row).astype(int)
    fc, fr = col - c0, row - r0
    ok = (c0 >= 0) & (r0 >= 0) & (c0 + 1 < height.shape[1]) & (r0 + 1 < height.shape[0])
    c0, r0 = np.where(ok, c0, 0), np.where(ok, r0, 0)
    out = (height[r0, c0] * (1 - fc) * (1 - fr) + height[r0, c0 + 1] * fc * (1 - fr)
           + height[r0 + 1, c0] * (1 - fc) * fr + height[r0 + 1, c0 + 1] * fc * fr)
    return np.where(ok, out, np.nan)


def source_pixel_m(path: Path) -> float:
    return open_dsm(path, None, box(*GRID.boundingbox, CRS)).dsm.res_m


# (crs, pixel, metres from a roof edge (inward) where the full height must be back)
DSMS = {
    "glo30-4326": ("EPSG:4326", 1 / 3600, 35),
    "utm-30m": (CRS, 30.0, 35),
    "utm-10m": (CRS, 10.0, 15),
    "lidar-2m": (CRS, 2.0, 10),
}


@pytest.mark.parametrize("name", DSMS)
def test_height_above_derived_ground(tmp_path, name):
    """Without a DTM the band is the height above the derived ground: roofs at their height, open ground at 0,
    on the tilted plane; nodata beyond the surface's edge; the report says how the height was made. (On a slope
    the filter's ground rises under wide roofs: measured -0.9 to -1.1 m on average on this 3.6 % slope.)"""
    crs, pixel, edge = DSMS[name]
    path = write_dsm(tmp_path / "dsm.tif", crs, pixel)
    source = open_dsm(path, None, box(*GRID.boundingbox, CRS))
    height = source.read(GRID)[0]
    x, y = grid_centres(GRID)
    covered, beyond = on_raster(path, x, y, -1), ~on_raster(path, x, y, 1)
    assert beyond.any() and np.isnan(height[beyond]).all() and np.isfinite(height[covered]).all()
    roofs = inside(x, y, edge) & covered
    error = height[roofs] - true_height(x, y)[roofs]
    assert -1.5 < error.mean() < 0.5 and np.abs(error).max() < 3.0  # measured mean -1.1 ... -0.9, max 2.4 (2 m lidar)
    open_ground = ~inside(x, y, -100) & covered
    assert np.abs(height[open_ground]).max() < 0.3 and np.abs(height[open_ground]).mean() < 0.05
    how = source.describe()["height"]
    assert how.startswith("derived: SMRF raster filter (lczmap.ground), window 100 m")
    assert ("averaged to the 10 m grid" in how) == (pixel == 2.0)


@pytest.mark.parametrize("name", ["glo30-4326", "utm-30m", "utm-10m"])
def test_filtered_on_the_dsms_own_pixels(tmp_path, name):
    """A DSM as coarse as the grid or coarser is filtered on its own pixels and only the height is resampled: the
    band equals the filter run on the whole raster, bilinearly interpolated (exactly in the grid's CRS; from
    EPSG:4326 within the approximate transformer's 0.01 pixel)."""
    crs, pixel, _ = DSMS[name]
    path = write_dsm(tmp_path / "dsm.tif", crs, pixel)
    height = open_dsm(path, None, box(*GRID.boundingbox, CRS)).read(GRID)[0]
    x, y = grid_centres(GRID)
    expected = filtered_whole_and_sampled(path, x, y)
    both = np.isfinite(expected) & np.isfinite(height)
    assert both.mean() > 0.8
    difference = np.abs(height - expected)[both]
    assert difference.max() < (1e-3 if crs == CRS else 0.3) and np.median(difference) < 1e-3


@pytest.mark.parametrize("name", ["glo30-4326", "utm-30m", "lidar-2m"])
def test_blocks_do_not_change_the_height(tmp_path, name):
    """The filter sees each block with its margin of context, so two block layouts give the whole grid's values:
    to float rounding on a DSM in the grid's CRS, within the 10 cm approximate transformer's effect (conftest
    assert_same_stack: < 0.5 m) when the height is reprojected from EPSG:4326. Blocks beyond the data are nodata."""
    crs, pixel, _ = DSMS[name]
    source = open_dsm(write_dsm(tmp_path / "dsm.tif", crs, pixel), None, box(*GRID.boundingbox, CRS))
    whole = source.read(GRID)[0]
    layouts = ((90, 90), (60, 180)) if pixel < 10 else ((64, 64), (37, 101))  # fewer where 10 m cells are filtered
    for rows, cols in layouts:
        blocks = read_in_blocks(source, rows, cols)
        np.testing.assert_array_equal(np.isnan(blocks), np.isnan(whole))
        finite = np.isfinite(whole)
        assert np.abs(blocks - whole)[finite].max() < (1e-4 if crs == CRS else 0.5)  # float rounding of the weights


def test_given_height_is_used_as_it_is(tmp_path):
    """dsm_height: given: a normalised DSM is resampled like any raster, no ground derived; a DTM contradicts it."""
    path = write_dsm(tmp_path / "dsm.tif", CRS, 30.0)
    aoi = box(*GRID.boundingbox, CRS)
    source = open_dsm(path, None, aoi, "given")
    np.testing.assert_array_equal(source.read(GRID), warp(str(path), [1], GRID, Resampling.bilinear))
    assert source.describe()["height"].startswith("given")
    with pytest.raises(LczmapError, match="drop one of them"):
        open_dsm(path, path, aoi, "given")


def test_staging_plan_and_report(demo_city):
    """Through city.yaml: the demo city (DSM and DTM) keeps DSM - DTM; without its DTM the ground is derived, and
    `dsm_height` / `--dsm-height` switch that off. The staging report names the method under sources.dsm.height."""
    city = load_city_config(demo_city / "city.yaml")
    grid = city_grid(read_aoi(city.aoi))
    with_dtm = plan_stage(city, grid)
    assert build_report(with_dtm)["sources"]["dsm"]["height"] == "dsm - dtm"
    derived = plan_stage(dataclasses.replace(city, dtm=None), grid)
    assert build_report(derived)["sources"]["dsm"]["height"].startswith("derived: SMRF")
    given_config = load_city_config(demo_city / "city.yaml", dsm_height="given")
    given = plan_stage(dataclasses.replace(given_config, dtm=None), grid)
    assert build_report(given)["sources"]["dsm"]["height"].startswith("given")


def test_dsm_height_option_errors(demo_city, tmp_path):
    """A mode that does not exist, and `given` with the demo city's DTM: one line each, exit 1, nothing written."""
    def stage(mode: str, out: str):
        args = ["-q", "stage", "--config", str(demo_city / "city.yaml"), "--dsm-height", mode, "--out", str(tmp_path / out)]
        return CliRunner().invoke(cli, args)

    bad = stage("normalised", "a.tif")
    assert bad.exit_code == 1 and "--dsm-height" in bad.output and "derive, given" in bad.output
    both = stage("given", "b.tif")
    assert both.exit_code == 1 and "drop one of them" in both.output and "Traceback" not in both.output
    assert not (tmp_path / "a.tif").exists() and not (tmp_path / "b.tif").exists()
