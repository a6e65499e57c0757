"""`lczmap predict --aoi` alone: the inputs it is not given are fetched into the cache and mapped, in one command.

Against real local servers (tests/servers.py): rustac's STAC API server and a Range-capable file server holding the
demo city laid out as the public services lay it out, plus the city's OSM file served by URL as an extract. The map
equals the one made from the same city's local files, and `--offline` reproduces it from the cache once the servers
are stopped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from click.testing import CliRunner

from lczmap.cli import cli
from servers import FileServer, StacApiServer

YEAR = "2023-01-01/2023-12-31"  # the demo city's acquisition dates


def predict(*args, cache: Path, quiet: bool = False):
    # The catalogue's city is not a demo city by name, so the model is named: without it predict would pull the
    # default real model from the internet, which the suite blocks.
    return CliRunner().invoke(cli, [*(["-q"] if quiet else []), "predict", "--model", "msmla18-demo", *map(str, args)],
                              env={"LCZMAP_CACHE": str(cache)})


def classes(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


@pytest.mark.timeout(300)
def test_predict_fetches_what_it_is_not_given_and_maps_as_from_local_files(catalog_city: Path, tmp_path: Path):
    city = catalog_city
    aoi = city / "aoi.geojson"
    local = yaml.safe_load((city / "city.yaml").read_text())
    cache = tmp_path / "cache"
    s2 = [arg for product in local["sentinel2"] for arg in ("--s2", city / product)]
    from_files = predict("--aoi", aoi, *s2, "--dsm", city / local["dsm"], "--landcover", city / local["landcover"],
                         "--osm", city / local["osm"], "--out", tmp_path / "files.tif", cache=cache)
    assert from_files.exit_code == 0, from_files.output
    assert "Fetching" not in from_files.output  # every input given: nothing fetched

    files = FileServer(city / "catalog")
    osm_files = FileServer(city)  # the city's OSM file, fetched by URL as an extract
    api = StacApiServer(city / "catalog", files.url, tmp_path / "stac-api")
    try:
        fetched = predict("--aoi", aoi, "--catalog", api.url, "--datetime", YEAR, "--max-cloud", 100,
                          "--osm", f"{osm_files.url}/{local['osm']}", "--out", tmp_path / "fetched.tif", cache=cache)
        assert fetched.exit_code == 0, fetched.output
        assert files.sent and osm_files.sent
    finally:
        api.stop()
        files.stop()
        osm_files.stop()
    assert "Fetching Sentinel-2 L2A, elevation (Copernicus DEM GLO-30), land cover (ESA WorldCover), OpenStreetMap " \
           f"buildings (not given) from {api.url}, OSM from {osm_files.url}" in fetched.output
    want = classes(tmp_path / "files.tif")
    assert (want > 0).mean() > 0.5 and len(np.unique(want)) > 3  # a real map (0 outside the AOI polygon)
    same = (classes(tmp_path / "fetched.tif") == want).mean()
    print(f"cells equal to the map from local files: {same:.4%}")
    assert same >= 0.999
    assert list((cache / "cities").glob("aoi-*/city.yaml"))

    offline = predict("--aoi", aoi, "--catalog", api.url, "--datetime", YEAR, "--max-cloud", 100,
                      "--osm", f"{osm_files.url}/{local['osm']}", "--offline", "--out", tmp_path / "offline.tif",
                      cache=cache)
    assert offline.exit_code == 0, offline.output
    np.testing.assert_array_equal(classes(tmp_path / "offline.tif"), classes(tmp_path / "fetched.tif"))


def test_predict_offline_with_nothing_cached_names_every_missing_input(catalog_city: Path, tmp_path: Path):
    city = catalog_city
    result = predict("--aoi", city / "aoi.geojson", "--dsm", city / "dsm.tif", "--offline",
                     "--out", tmp_path / "lcz.tif", cache=tmp_path / "cache", quiet=True)
    assert result.exit_code == 1
    line = result.output.strip()
    assert line.count("\n") == 0 and line.startswith("Error: 3 input(s) missing"), line
    for name in ("Sentinel-2 L2A", "land cover", "OpenStreetMap", "--s2", "--landcover", "--osm", "lczmap fetch --aoi"):
        assert name in line
    assert "--dsm" not in line  # given, so not fetched
    assert not list(tmp_path.glob("lcz*"))
