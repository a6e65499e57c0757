"""`lczmap predict` with no --model on inputs that are not a demo city: the default model (so2sat-sen2lcz) is resolved
before anything is fetched, so a missing model fails first and a Sentinel-2-only model fetches Sentinel-2 alone.

Against the local servers of tests/servers.py (the catalogue's city is a demo city laid out as the public services
lay it out, but its AOI given alone is not a demo city); the model is the shared So2Sat release
(../shared/models/so2sat-sen2lcz, see tests/test_real_models.py), imported into a temporary cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from lczmap.cli import cli

WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "models" / "so2sat-sen2lcz" / "_32_weights.best.hdf5"
YEAR = "2023-01-01/2023-12-31"  # the demo city's acquisition dates


def predict(*args, cache: Path):
    return CliRunner().invoke(cli, ["predict", *map(str, args)], env={"LCZMAP_CACHE": str(cache)})


def test_offline_without_the_default_model_fails_in_one_line_before_fetching(catalog_city, tmp_path):
    cache = tmp_path / "cache"
    result = predict("--aoi", catalog_city / "aoi.geojson", "--offline", "--out", tmp_path / "lcz.tif", cache=cache)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert "so2sat-sen2lcz" in errors[0] and "--offline" in errors[0] and "lczmap models import" in errors[0]
    assert "Fetching" not in result.output and "input(s) missing" not in result.output
    assert not (cache / "cities").exists() and not list(tmp_path.glob("lcz*"))


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="../shared/models/so2sat-sen2lcz is not here")
@pytest.mark.timeout(300)
def test_default_sentinel2_only_model_fetches_only_sentinel2(catalog_city, stac_api, tmp_path):
    cache = tmp_path / "cache"
    imported = CliRunner().invoke(cli, ["-q", "models", "import", str(WEIGHTS), "--as", "so2sat-sen2lcz"],
                                  env={"LCZMAP_CACHE": str(cache)})
    assert imported.exit_code == 0, imported.output
    out = tmp_path / "lcz.tif"
    result = predict("--aoi", catalog_city / "aoi.geojson", "--catalog", stac_api.url, "--datetime", YEAR,
                     "--max-cloud", 100, "--no-filter", "--out", out, cache=cache)
    assert result.exit_code == 0, result.output
    assert f"Fetching Sentinel-2 L2A (not given) from {stac_api.url}" in result.output
    fetched = yaml.safe_load(next((cache / "cities").glob("aoi-*/city.yaml")).read_text())
    assert fetched.get("sentinel2") and not any(fetched.get(key) for key in ("dsm", "landcover", "osm"))
    assert out.is_file()
