"""The input guard (lczmap.guard) on a region (a map made in tiles): run once for the whole region, its warnings in the
region's summary, --strict-inputs refuses before any tile; the synthetic-model warning is logged once per map, not per
tile. And on a city whose Sentinel-2 digital numbers still carry baseline 04.00's +1000 offset but are read as
DN / 10000.

The inputs are the demo city's, copied and renamed (so not a demo city: the demo model is flagged there) with its DSM
of absolute elevation passed as height above ground (`dsm_height: given`, no DTM), over a small AOI astride the
edge of two 1 km tiles.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pytest
import shapely
import yaml
from click.testing import CliRunner
from odc.geo.geom import Geometry

from lczmap.aoi import read_aoi
from lczmap.cli import cli
from lczmap.grid import utm_crs

TILE_M, AOI_M = 1000.0, 600.0  # --tile-km 1: tiles lie on a fixed 1 km grid of the UTM zone


@pytest.fixture(scope="module")
def absolute_dsm_city(demo_city, tmp_path_factory) -> Path:
    """city.yaml of a copy of the demo city: renamed, a 600 m AOI near its centre astride a tile edge (two tiles), its
    DSM given as heights above ground although it holds elevation above sea level."""
    city = tmp_path_factory.mktemp("guard-region") / "city"
    shutil.copytree(demo_city, city)
    aoi = read_aoi(city / "aoi.geojson")
    utm = aoi.to_crs(utm_crs(aoi))
    x, y = utm.centroid.coords[0]
    x0 = round(x / TILE_M) * TILE_M - AOI_M / 2  # astride a tile edge in x, inside one row of tiles in y
    y0 = math.floor(y / TILE_M) * TILE_M + (TILE_M - AOI_M) / 2
    box = Geometry(shapely.box(x0, y0, x0 + AOI_M, y0 + AOI_M), utm.crs).to_crs("EPSG:4326")
    (city / "small.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": box.json}]}))
    config = yaml.safe_load((city / "city.yaml").read_text())
    del config["dtm"]
    config.update(name="my-seoul", aoi="small.geojson", dsm_height="given")
    (city / "city.yaml").write_text(yaml.safe_dump(config))
    return city / "city.yaml"


def predict(config: Path, out: Path, *extra: str):
    return CliRunner().invoke(cli, ["-q", "predict", "--config", str(config), "--model", "msmla18-demo",
                                    "--tile-km", "1", "--out", str(out), *extra])


def test_region_strict_inputs_refuses_before_any_tile(absolute_dsm_city, tmp_path):
    result = predict(absolute_dsm_city, tmp_path / "lcz.tif", "--strict-inputs")
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and len(errors) == 1 and "Traceback" not in result.output, result.output
    assert "band dsm" in errors[0] and "absolute elevation" in errors[0]
    assert list(tmp_path.iterdir()) == []  # no map, no tiles folder


def test_region_warns_once_per_map_and_lists_warnings_in_its_summary(absolute_dsm_city, tmp_path, caplog):
    out = tmp_path / "lcz.tif"
    with caplog.at_level(logging.WARNING):
        result = predict(absolute_dsm_city, out)
    assert result.exit_code == 0, result.output
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["tiles"] == 2
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("absolute elevation" in m for m in messages) == 1, messages
    assert sum("synthetic demo cities only" in m for m in messages) == 1, messages
    assert len(summary["input_warnings"]) == 1 and "absolute elevation" in summary["input_warnings"][0]
    assert summary["model_synthetic"] is True


def test_sentinel2_offset_read_as_harmonised_warns_and_strict_inputs_refuses(demo_city, tmp_path):
    """Band files of an L2A scene reprocessed with baseline >= 04.00 (ESA's Collection-1 reprocessing of 2015-2021
    scenes: +1000 DN offset) without its MTD_MSIL2A.xml: the 2019 date in their names says no offset, so every
    reflectance is 0.1 too high."""
    bands = tmp_path / "T52SCG_20191008"
    bands.mkdir()
    for jp2 in next(demo_city.glob("*.SAFE")).glob("GRANULE/*/IMG_DATA/R*m/*.jp2"):
        shutil.copy(jp2, bands / jp2.name.replace("_2023", "_2019"))
    config = yaml.safe_load((demo_city / "city.yaml").read_text())
    for key in ("aoi", "dsm", "dtm", "landcover", "osm"):
        config[key] = str(demo_city / config[key])
    config.update(sentinel2=str(bands), vhr=None, reference=None, truth=None)  # still the demo city, by its name
    (tmp_path / "city.yaml").write_text(yaml.safe_dump({k: v for k, v in config.items() if v is not None}))
    args = ["-q", "predict", "--config", str(tmp_path / "city.yaml"), "--model", "msmla18-demo"]
    refused = CliRunner().invoke(cli, [*args, "--strict-inputs", "--out", str(tmp_path / "strict.tif")])
    errors = [line for line in refused.output.splitlines() if line.startswith("Error:")]
    assert refused.exit_code == 1 and len(errors) == 1 and "Traceback" not in refused.output, refused.output
    assert "band B02" in errors[0] and "unharmonised L2A (baseline >= 04.00 offset)" in errors[0]
    assert not list(tmp_path.glob("strict*"))
    out = tmp_path / "lcz.tif"
    result = CliRunner().invoke(cli, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert [w.split(":")[0] for w in summary["input_warnings"]] == ["band B02", "band B03", "band B04"]
    assert all("unharmonised L2A" in w for w in summary["input_warnings"])
    assert summary["model_synthetic"] is False
