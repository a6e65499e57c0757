"""Real models on real inputs: the published So2Sat LCZ42 Sen2LCZ-Net maps real Sentinel-2 patches from `--s2` alone.

Reads ../shared/models/so2sat-sen2lcz (MIT, Copyright (c) 2021 ChunpingQiu; Qiu et al. 2020, IEEE JSTARS 13) and
../shared/realdata/sentinel2 (BigEarthNet patches, CDLA-Permissive-1.0); see their PROVENANCE.md files. Skipped
where ../shared is absent. The known answer (arable patch mostly D, forest patch mostly A) is PROVENANCE.md's.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely.geometry
from click.testing import CliRunner
from rasterio.warp import transform_geom

from lczmap.cli import cli

SHARED = Path(__file__).resolve().parents[2] / "shared"
WEIGHTS = SHARED / "models" / "so2sat-sen2lcz" / "_32_weights.best.hdf5"
PATCHES = SHARED / "realdata" / "sentinel2"
pytestmark = pytest.mark.skipif(not WEIGHTS.is_file(), reason="../shared/models/so2sat-sen2lcz is not here")
ARABLE, FOREST = "S2A_MSIL2A_20170613T101031_87_48", "S2B_MSIL2A_20170924T93020_69_24"
LCZ_A, LCZ_D = 11, 14


@pytest.fixture(scope="module")
def so2sat_cache(tmp_path_factory):
    """A model cache with the shared release imported by `lczmap models import`."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LCZMAP_CACHE", str(cache))
        result = CliRunner().invoke(cli, ["models", "import", str(WEIGHTS), "--as", "so2sat-sen2lcz"])
        assert result.exit_code == 0, result.output
        yield cache


def patch_aoi(patch: str, folder: Path) -> Path:
    """An AOI GeoJSON (EPSG:4326) inside a BigEarthNet patch: its bounds shrunk by 200 m, so every cell's window fits."""
    with rasterio.open(PATCHES / patch / f"{patch}_B02.tif") as ds:
        b = ds.bounds
        box = shapely.geometry.box(b.left + 200, b.bottom + 200, b.right - 200, b.top - 200)
        geometry = transform_geom(ds.crs, "EPSG:4326", shapely.geometry.mapping(box))
    path = folder / f"{patch}.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection",
                                "features": [{"type": "Feature", "properties": {}, "geometry": geometry}]}))
    return path


@pytest.mark.parametrize(("patch", "expected"), [(ARABLE, LCZ_D), (FOREST, LCZ_A)])
def test_so2sat_maps_real_patches_from_s2_alone(so2sat_cache, tmp_path, monkeypatch, caplog, patch, expected):
    monkeypatch.setenv("LCZMAP_CACHE", str(so2sat_cache))
    out = tmp_path / "lcz.tif"
    with caplog.at_level(logging.WARNING):
        result = CliRunner().invoke(cli, ["-q", "predict", "--aoi", str(patch_aoi(patch, tmp_path)), "--s2",
                                          str(PATCHES / patch), "--model", "so2sat-sen2lcz", "--no-filter",
                                          "--out", str(out)])
    assert result.exit_code == 0, result.output
    # a Sentinel-2-only model asks for no DSM, OSM or land cover
    assert not [r for r in caplog.records if "band(s)" in r.getMessage()], caplog.text
    with rasterio.open(out) as ds:
        classes = ds.read(1)
    mapped = classes[classes > 0]
    assert mapped.size >= 50 and np.mean(mapped == expected) > 0.6, np.unique(mapped, return_counts=True)
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["model_synthetic"] is False and summary["input_warnings"] == []


def demo_inputs(city: Path) -> list[str]:
    """The demo city's inputs on the command line, without its DTM."""
    safe = next(city.glob("*.SAFE"))
    return ["--aoi", str(city / "aoi.geojson"), "--s2", str(safe), "--osm", str(city / "buildings.osm"),
            "--landcover", str(city / "worldcover.tif"), "--dsm", str(city / "dsm.tif")]


def test_absolute_dsm_warns_and_strict_inputs_refuses(demo_city, tmp_path):
    """A DSM of absolute elevation passed as height above ground (--dsm-height given, no DTM)."""
    args = ["-q", "predict", *demo_inputs(demo_city), "--dsm-height", "given", "--model", "msmla18-demo"]
    refused = CliRunner().invoke(cli, [*args, "--strict-inputs", "--out", str(tmp_path / "strict.tif")])
    errors = [ln for ln in refused.output.splitlines() if ln.startswith("Error:")]
    assert refused.exit_code == 1 and len(errors) == 1 and "Traceback" not in refused.output, refused.output
    assert "band dsm" in errors[0] and "absolute elevation" in errors[0]
    assert not list(tmp_path.iterdir())
    out = tmp_path / "lcz.tif"
    result = CliRunner().invoke(cli, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert len(summary["input_warnings"]) == 1 and "absolute elevation" in summary["input_warnings"][0]
    assert summary["model_synthetic"] is False  # a demo city: the demo model is in its domain


def test_demo_model_on_inputs_that_are_not_a_demo_city_is_flagged(demo_city, tmp_path):
    city = tmp_path / "city"
    shutil.copytree(demo_city, city)
    (city / "city.yaml").write_text((city / "city.yaml").read_text().replace("name: demo-", "name: my-"))
    out = tmp_path / "lcz.tif"
    result = CliRunner().invoke(cli, ["-q", "predict", "--config", str(city / "city.yaml"), "--model", "msmla18-demo",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.with_suffix(".summary.json").read_text())["model_synthetic"] is True


def test_so2sat_maps_a_sentinel2_only_stack(so2sat_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("LCZMAP_CACHE", str(so2sat_cache))
    stack, out = tmp_path / "stack.zarr", tmp_path / "lcz.tif"
    staged = CliRunner().invoke(cli, ["-q", "stage", "--aoi", str(patch_aoi(ARABLE, tmp_path)), "--s2",
                                      str(PATCHES / ARABLE), "--out", str(stack)])
    assert staged.exit_code == 0, staged.output
    result = CliRunner().invoke(cli, ["-q", "predict", "--stack", str(stack), "--model", "so2sat-sen2lcz",
                                      "--no-filter", "--out", str(out)])
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as ds:
        mapped = ds.read(1)[ds.read(1) > 0]
    assert np.mean(mapped == LCZ_D) > 0.6

