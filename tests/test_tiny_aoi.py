"""AOIs of a few cells or less map the cells they lie in: a 1 m2 square, one cell, 2 x 2 cells, a hairline polygon.

An AOI that holds no output-cell centre maps the cells it touches (lczmap.grid.city_grid), and a map narrower
than the Gaussian filter's reach is filtered exactly as a wide one (lczmap.mosaic.class_stack); before, the
first ones were refused as "none of the Sentinel-2 products overlaps the AOI" and the others failed with
Dask's "overlapping depth 5 is larger than your array 2".
"""

from __future__ import annotations

import json
from pathlib import Path

import dask.array as da
import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from click.testing import CliRunner

from lczmap.aoi import read_aoi
from lczmap.cli import cli
from lczmap.grid import city_grid, utm_crs
from lczmap.mosaic import class_stack, filter_reach, lcz_filter
from lczmap.outputs import output_paths

# name: (the AOI as (x0, y0, x1, y1) metres from a cell corner near the city's centre, cells it maps)
SHAPES = {
    "one_square_metre": ((30, 30, 31, 31), 1),
    "one_cell": ((0, 0, 100, 100), 1),
    "two_by_two_cells": ((0, 0, 200, 200), 4),
    "hairline": ((0, 30, 300, 30.01), 3),  # 300 m long, 1 cm wide: no cell centre inside
}


@pytest.fixture(scope="module")
def aois(demo_city, tmp_path_factory) -> dict[str, Path]:
    """Each shape as GeoJSON in EPSG:4326 (as a user draws it), placed from a 100 m cell corner of the city's UTM grid."""
    folder = tmp_path_factory.mktemp("tiny-aois")
    city = read_aoi(demo_city / "aoi.geojson")
    crs = utm_crs(city)
    centre = city.to_crs(crs).geom.centroid
    x, y = np.floor(centre.x / 100) * 100, np.floor(centre.y / 100) * 100
    paths = {}
    for name, ((x0, y0, x1, y1), _) in SHAPES.items():
        paths[name] = folder / f"{name}.geojson"
        box = shapely.box(x + x0, y + y0, x + x1, y + y1)
        gpd.GeoDataFrame(geometry=[box], crs=str(crs)).to_crs("EPSG:4326").to_file(paths[name])
    return paths


@pytest.mark.parametrize("name", SHAPES)
def test_the_grid_covers_the_cells_the_aoi_lies_in(aois, name):
    grid = city_grid(read_aoi(aois[name]))
    assert grid.aoi_mask.sum() == SHAPES[name][1]


@pytest.mark.parametrize("name", SHAPES)
def test_predict_maps_a_tiny_aoi(demo_city, aois, tmp_path, name):
    out = tmp_path / "lcz.tif"
    result = CliRunner().invoke(cli, ["-q", "predict", "--config", str(demo_city / "city.yaml"), "--aoi", str(aois[name]),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    with rasterio.open(output_paths(out)["filled"]) as src:
        status = src.read(1)  # 0 outside the AOI; 1 mapped, 2 filled, 3 no class (a cloud over the cell)
    assert (status > 0).sum() == SHAPES[name][1]
    summary = json.loads(output_paths(out)["summary"].read_text())
    assert summary["aoi_km2"] == pytest.approx(SHAPES[name][1] * 0.01)


def test_stage_stages_a_one_square_metre_aoi(demo_city, aois, tmp_path):
    out = tmp_path / "stack.zarr"
    result = CliRunner().invoke(cli, ["-q", "stage", "--config", str(demo_city / "city.yaml"), "--aoi",
                                      str(aois["one_square_metre"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.with_name(out.name + ".report.json").read_text())
    assert report["aoi_pixels"] == 100  # the one 100 m cell's 10 x 10 base pixels
    assert report["valid_fraction"] > 0


@pytest.mark.parametrize("shape", [(1, 1), (2, 2), (1, 7), (4, 1), (3, 12)])
def test_the_filter_of_a_map_narrower_than_its_reach_is_the_whole_map_filter(shape):
    assert min(shape) < filter_reach(100.0)
    rng = np.random.default_rng(sum(shape))
    probabilities = rng.random((17, *shape)).astype("float32")
    probabilities[:, rng.random(shape) < 0.3] = np.nan  # cells without a prediction, filled by the filter
    aoi = np.ones(shape, bool)
    bands = class_stack(da.from_array(probabilities, chunks=(17, 2, 2)), da.from_array(aoi, chunks=2), 100.0).compute()
    np.testing.assert_array_equal(bands[1], lcz_filter(bands[0], 100.0, fill=aoi))
