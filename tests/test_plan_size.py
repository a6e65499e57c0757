"""A plan's size is checked from the AOI's bounds before any pixel is read or any tile list is built.

Before, `lczmap stage` with a continent-sized AOI climbed to 19.5 GB with no log line (the Sentinel-2
planning grid of the whole AOI), and `lczmap predict` cut 8 000 tiles for minutes before saying anything.
The timeouts below guard against that hang; they are not timings.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from lczmap.aoi import read_aoi
from lczmap.cli import cli
from lczmap.grid import MAX_REGION_TILES, check_region_size
from lczmap.region import needs_region, plan_tiles


def _box(path: Path, west: float, south: float, east: float, north: float) -> Path:
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    doc = {"type": "FeatureCollection",
           "features": [{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}]}
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def continent(tmp_path_factory) -> Path:
    """A box some 3000 km wide around the demo city (East Asia)."""
    return _box(tmp_path_factory.mktemp("continent") / "continent.geojson", 113, 22, 140, 49)


def _one_error_line(result) -> str:
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


@pytest.mark.timeout(120)
def test_stage_refuses_a_continent_with_its_size_and_the_way_to_map_it(demo_city, continent, tmp_path):
    out = tmp_path / "stack.zarr"
    line = _one_error_line(CliRunner().invoke(cli, ["stage", "--config", str(demo_city / "city.yaml"), "--aoi",
                                                    str(continent), "--out", str(out)]))
    assert line.startswith(f"Error: --aoi {continent}: ")
    assert "km2" in line and "pixels at 10 m" in line and " GB" in line
    assert f"lczmap predict --aoi {continent} --tiles" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(120)
def test_predict_refuses_a_region_of_too_many_tiles_before_cutting_them(demo_city, continent, tmp_path):
    line = _one_error_line(CliRunner().invoke(cli, ["predict", "--config", str(demo_city / "city.yaml"), "--aoi",
                                                    str(continent), "--out", str(tmp_path / "lcz.tif")]))
    assert line.startswith(f"Error: --aoi {continent}: ") and "km2" in line
    assert f"at most {MAX_REGION_TILES} tiles" in line and "--tile-km" in line
    assert list(tmp_path.iterdir()) == []


def test_a_region_logs_its_tile_count_before_cutting_tiles(tmp_path, caplog):
    path = _box(tmp_path / "region.geojson", 124, 33, 129, 37)  # some 450 x 440 km: a region
    aoi = read_aoi(path)
    assert needs_region(aoi)
    with caplog.at_level(logging.INFO, logger="lczmap.grid"):
        estimate = check_region_size(aoi, 64.0, path)
    assert f"cutting about {estimate} tiles of 64 km" in caplog.text
    assert abs(len(plan_tiles(aoi, 64.0)) - estimate) <= 0.25 * estimate  # an estimate: UTM zones split columns
