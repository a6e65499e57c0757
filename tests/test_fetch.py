"""`lczmap fetch` against real local servers: rustac's STAC API server and a Range-capable HTTP file server holding
a demo city laid out as the public services lay it out (tests/servers.py, conftest's catalog_city fixtures).

Every fetched input is compared with the same city's local files: the Sentinel-2 composite read from the fetched
band folders equals the one read from the .SAFE products, and the DEM and WorldCover windows equal the demo's
rasters pixel for pixel.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from click.testing import CliRunner
from rasterio.windows import from_bounds

from lczmap.aoi import read_aoi
from lczmap.cli import cli
from lczmap.demo.catalog import EARTH_SEARCH_ASSETS, write_catalog
from lczmap.errors import OptionError
from lczmap.fetch import FetchOptions, MissingInputsError, fetch_city
from lczmap.fetch.catalogs import CATALOGS, resolve_catalog
from lczmap.fetch.sentinel2 import radiometry
from lczmap.grid import city_grid
from lczmap.sources.sentinel2 import open_products
from servers import FileServer, free_port

YEAR = "2023-01-01/2023-12-31"  # the demo city's acquisition dates
RASTERS = ("sentinel2", "dsm", "landcover")


def options(cache: Path, **kw) -> FetchOptions:
    """Fetch options for the tests: the demo's year, every Item (max cloud 100), fast timeouts, no progress bars."""
    base = dict(datetime=YEAR, max_cloud=100.0, sources=RASTERS, cache=cache, progress=False, timeout_s=3,
                retries=2, backoff_s=0.05)
    return FetchOptions(**{**base, **kw})


@pytest.fixture
def servers(file_server, stac_api):
    """The session's servers with a clean request log and no faults, before and after each test."""
    file_server.reset()
    yield file_server, stac_api
    file_server.reset()


@functools.cache
def local_composite(city: Path) -> np.ndarray:
    """The demo city's Sentinel-2 composite of every .SAFE product, on its base grid (read once: JP2 decoding is slow)."""
    grid = city_grid(read_aoi(city / "aoi.geojson"))
    local = yaml.safe_load((city / "city.yaml").read_text())
    return open_products([str(city / s) for s in local["sentinel2"]], grid).read(grid.base)


def assert_same_city(fetched: Path, city: Path) -> None:
    """The fetched rasters hold the demo city's own pixels: the composite of every product, the DEM, WorldCover."""
    grid = city_grid(read_aoi(city / "aoi.geojson"))
    np.testing.assert_array_equal(local_composite(city), open_products(str(fetched / "sentinel2"), grid).read(grid.base))
    for name, mine in (("dsm.tif", "dsm.tif"), ("worldcover.tif", "landcover.tif")):
        with rasterio.open(city / name) as src, rasterio.open(fetched / mine) as got:
            window = from_bounds(*got.bounds, src.transform).round_offsets().round_lengths()
            np.testing.assert_array_equal(src.read(1, window=window, boundless=True, fill_value=src.nodata), got.read(1))


def test_demo_catalog_is_laid_out_as_the_services(catalog_city: Path):
    root = catalog_city / "catalog"
    catalog = json.loads((root / "catalog.json").read_text())
    assert {ln["href"] for ln in catalog["links"] if ln["rel"] == "child"} == {
        "./sentinel-2-l2a/collection.json", "./cop-dem-glo-30/collection.json", "./esa-worldcover/collection.json"}
    items = [json.loads(line) for line in (root / "items.ndjson").read_text().splitlines()]
    s2 = [i for i in items if i["collection"] == "sentinel-2-l2a"]
    assert len(s2) == 3 and all(re.fullmatch(r"S2B_\d\d[A-Z]{3}_\d{8}_0_L2A", i["id"]) for i in s2)
    for item in items:
        for asset in item["assets"].values():
            assert not asset["href"].startswith(("/", "http")) and (root / asset["href"]).is_file()
    red = s2[0]["assets"]["red"]
    assert set(s2[0]["assets"]) == set(EARTH_SEARCH_ASSETS)
    assert red["raster:bands"][0]["scale"] == 0.0001 and red["raster:bands"][0]["offset"] == -0.1
    props = s2[0]["properties"]
    assert {"eo:cloud_cover", "s2:processing_baseline", "proj:epsg", "earthsearch:boa_offset_applied"} <= set(props)
    with rasterio.open(root / red["href"]) as src:
        assert src.block_shapes[0] == (1024, 1024) and src.profile.get("tiled")
    dem = [i["id"] for i in items if i["collection"] == "cop-dem-glo-30"]
    assert dem and all(re.fullmatch(r"Copernicus_DSM_COG_10_[NS]\d\d_00_[EW]\d{3}_00_DEM", d) for d in dem)
    wc = [i for i in items if i["collection"] == "esa-worldcover"]
    assert re.fullmatch(r"ESA_WorldCover_10m_2021_v200_[NS]\d\d[EW]\d{3}", wc[0]["id"])
    assert wc[0]["properties"]["esa_worldcover:product_version"] == "2.0.0" and "map" in wc[0]["assets"]


def test_demo_data_catalog_option(tmp_path: Path):
    result = CliRunner().invoke(cli, ["-q", "demo-data", str(tmp_path / "c"), "--size-km", "1", "--scenes", "1", "--catalog"])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "c" / "catalog" / "items.ndjson").read_text().splitlines()
    assert (tmp_path / "c" / "catalog" / "catalog.json").is_file() and len(lines) >= 3


def test_fetch_from_stac_api_equals_the_local_files_then_offline_from_cache(servers, catalog_city: Path, tmp_path: Path):
    files, api = servers
    city_yaml = fetch_city(catalog_city / "aoi.geojson", tmp_path / "city", options(tmp_path / "cache", catalog=api.url))
    doc = yaml.safe_load(city_yaml.read_text())
    assert_same_city(tmp_path / "city", catalog_city)
    s2 = doc["provenance"]["sentinel2"]
    assert len(s2["items"]) == 3 and s2["skipped"] == []
    assert all(i["processing_baseline"] and i["cloud_cover"] is not None for i in s2["items"])
    assert {i["reflectance"]["offset"] for i in s2["items"]} == {-0.1}
    credits = doc["provenance"]["credits"]
    assert "Copernicus Sentinel" in credits and "Copernicus DEM" in credits and "CC BY 4.0" in credits
    ranges = [s for s in files.sent if s.range]
    assert ranges and all(s.status == 206 for s in ranges) and not [s for s in files.sent if s.status == 200 and s.nbytes]

    files.reset()  # the same AOI offline: everything from the cache, not one request
    fetch_city(catalog_city / "aoi.geojson", tmp_path / "again", options(tmp_path / "cache", catalog=api.url, offline=True))
    assert files.sent == []
    assert_same_city(tmp_path / "again", catalog_city)
    inner = tmp_path / "inner.geojson"  # another AOI inside the first: the cache holds it too
    lonlat = read_aoi(catalog_city / "aoi.geojson").to_crs("EPSG:4326").geom.centroid
    inner.write_text(json.dumps({"type": "Polygon", "coordinates": [[
        [lonlat.x + dx * 0.005, lonlat.y + dy * 0.005] for dx, dy in ((-1, -1), (1, -1), (1, 1), (-1, 1), (-1, -1))]]}))
    doc = yaml.safe_load(fetch_city(inner, tmp_path / "inner", options(tmp_path / "cache", catalog=api.url,
                                                                         offline=True)).read_text())
    assert len(doc["provenance"]["sentinel2"]["items"]) >= 1 and files.sent == []


def test_offline_with_an_empty_cache_names_every_missing_input(catalog_city: Path, tmp_path: Path):
    aoi = catalog_city / "aoi.geojson"
    result = CliRunner().invoke(cli, ["-q", "fetch", "--aoi", str(aoi), "--out", str(tmp_path / "city"), "--offline",
                                      "--osm", str(catalog_city / "buildings.osm")],
                                env={"LCZMAP_CACHE": str(tmp_path / "cache")})
    assert result.exit_code == 1
    line = result.output.strip()
    assert line.count("\n") == 0 and line.startswith("Error: ")
    for name in ("Sentinel-2 L2A", "elevation", "land cover", "--s2", "--dsm", "--landcover", "lczmap fetch --aoi"):
        assert name in line
    assert not (tmp_path / "city" / "city.yaml").exists()


def test_an_unreachable_catalogue_is_one_error_naming_each_input(catalog_city: Path, tmp_path: Path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(MissingInputsError, match="3 input") as err:
        fetch_city(catalog_city / "aoi.geojson", tmp_path / "city", options(tmp_path / "cache", catalog=url))
    assert str(err.value).count(url) >= 3 and "try another --catalog" in str(err.value)


def test_a_catalogue_that_never_answers_times_out(catalog_city: Path, tmp_path: Path):
    hanging = FileServer(tmp_path)
    hanging.faults.always[""] = "hang"
    start = time.monotonic()
    try:
        with pytest.raises(MissingInputsError, match="failed"):
            fetch_city(catalog_city / "aoi.geojson", tmp_path / "city",
                       options(tmp_path / "cache", catalog=hanging.url, sources=("dsm",), timeout_s=1, retries=0))
    finally:
        hanging.stop()
    assert time.monotonic() - start < 15


def test_5xx_then_ok_and_a_truncated_body_are_retried(servers, catalog_city: Path, tmp_path: Path):
    files, api = servers
    files.faults.queue[r"_20231008_0_L2A/B04\.tif$"] = [500, 503]
    files.faults.queue[r"_20230210_0_L2A/B11\.tif$"] = ["ok", "ok", "ok", "truncate"]  # the data range, cut short
    files.faults.queue[r"Copernicus_DSM_.*\.tif$"] = [429]
    fetch_city(catalog_city / "aoi.geojson", tmp_path / "city", options(tmp_path / "cache", catalog=api.url))
    assert_same_city(tmp_path / "city", catalog_city)
    statuses = [s.status for s in files.sent if s.path.endswith("_20231008_0_L2A/B04.tif")]
    assert statuses[:2] == [500, 503] and statuses[-1] == 206
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_an_asset_that_never_answers_or_is_missing_costs_one_observation(servers, catalog_city: Path, tmp_path: Path):
    files, api = servers
    files.faults.always[r"_20231028_0_L2A/B11\.tif$"] = 404
    files.faults.always[r"_20230210_0_L2A/SCL\.tif$"] = "hang"
    start = time.monotonic()
    doc = yaml.safe_load(fetch_city(catalog_city / "aoi.geojson", tmp_path / "city",
                                    options(tmp_path / "cache", catalog=api.url, timeout_s=1, retries=0)).read_text())
    assert time.monotonic() - start < 20
    s2 = doc["provenance"]["sentinel2"]
    assert [i["id"] for i in s2["items"]] == ["S2B_52SCG_20231008_0_L2A"]
    reasons = {s["id"]: s["reason"] for s in s2["skipped"]}
    assert "404" in reasons["S2B_52SCG_20231028_0_L2A"] and "one observation fewer" in reasons["S2B_52SCG_20231028_0_L2A"]
    assert "timed out" in reasons["S2B_52SCG_20230210_0_L2A"].lower()
    assert len(list((tmp_path / "city" / "sentinel2").iterdir())) == 1


def test_kill_9_mid_fetch_then_rerun_fetches_only_what_is_missing(servers, catalog_city: Path, tmp_path: Path):
    files, api = servers
    cache = tmp_path / "cache"
    files.faults.delay_s = 0.1  # slow enough to be killed half way
    env = {**os.environ, "LCZMAP_CACHE": str(cache)}
    cmd = [sys.executable, "-c", "from lczmap.cli import main; main()", "-q", "fetch", "--aoi",
           str(catalog_city / "aoi.geojson"), "--out", str(tmp_path / "city"), "--catalog", api.url,
           "--datetime", YEAR, "--max-cloud", "100", "--osm", str(catalog_city / "buildings.osm")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(list(cache.rglob("r*_c*.tif"))) < 4 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = {p.parent for p in cache.rglob("r*_c*.tif")}  # each demo asset is one chunk
    assert done and proc.returncode == -signal.SIGKILL
    files.faults.delay_s = 0.0
    files.reset()
    fetch_city(catalog_city / "aoi.geojson", tmp_path / "city", options(cache / "fetch", catalog=api.url))  # the same cache
    assert_same_city(tmp_path / "city", catalog_city)
    items = {i["id"]: i for i in map(json.loads, (catalog_city / "catalog" / "items.ndjson").read_text().splitlines())}
    cached_before = {"/" + items[f.parent.name]["assets"][f.name]["href"] for f in done}  # <collection>/<item>/<asset>
    again = [(s.path, s.range, s.status) for s in files.sent if s.path in cached_before]
    assert not again
    assert not list(cache.rglob("*.tmp")) and not list((tmp_path / "city").glob(".*.tmp"))


def test_planetary_computer_layout_from_a_static_catalog(catalog_city: Path, tmp_path: Path):
    root = write_catalog(catalog_city, layout="planetary-computer", folder=tmp_path / "pc")
    items = [json.loads(line) for line in (root / "items.ndjson").read_text().splitlines()]
    assert {"B02", "B8A", "SCL"} <= set(items[0]["assets"]) and "raster:bands" not in items[0]["assets"]["B02"]
    server = FileServer(root)
    try:
        fetch_city(catalog_city / "aoi.geojson", tmp_path / "city",
                   options(tmp_path / "cache", catalog=f"{server.url}/catalog.json"))
    finally:
        server.stop()
    assert_same_city(tmp_path / "city", catalog_city)


def test_reflectance_rule_from_the_item_metadata_only():
    rb = {"raster:bands": [{"scale": 0.0001, "offset": -0.1}]}
    item = {"id": "x", "properties": {"datetime": "2023-05-01T00:00:00Z"}}
    harmonised = {"properties": {**item["properties"], "earthsearch:boa_offset_applied": True}}
    assert radiometry(harmonised, rb)[:2] == (0.0001, 0.0)
    old = {"properties": {"datetime": "2023-05-01T00:00:00Z", "s2:processing_baseline": "03.01"}}
    assert radiometry(old, rb)[:2] == (0.0001, 0.0)
    new = {"properties": {"datetime": "2019-05-01T00:00:00Z", "s2:processing_baseline": "05.10"}}
    assert radiometry(new, {})[:2] == (0.0001, -0.1)
    assert radiometry(item, rb)[:2] == (0.0001, -0.1)
    assert radiometry({"properties": {"datetime": "2019-05-01T00:00:00Z"}}, {})[:2] == (0.0001, 0.0)


def test_catalogue_names_and_urls():
    assert set(CATALOGS) >= {"earth-search", "planetary-computer"}
    assert resolve_catalog("planetary-computer").sentinel2.signer == "planetary_computer"
    assert resolve_catalog("earth-search").sentinel2.assets["B02"] == "blue"
    custom = resolve_catalog("http://127.0.0.1:9/stac/")
    assert custom.sentinel2.url == custom.dem.url == "http://127.0.0.1:9/stac" and custom.sentinel2.signer is None
    with pytest.raises(OptionError, match="--catalog nowhere"):
        resolve_catalog("nowhere")
    result = CliRunner().invoke(cli, ["fetch", "--aoi", "a.geojson", "--out", "x", "--catalog", "nowhere"])
    assert result.exit_code == 1 and "Error: --catalog nowhere: not a known catalogue" in result.output
    result = CliRunner().invoke(cli, ["fetch", "--aoi", "a.geojson", "--out", "x", "--datetime", "2023-13-01/.."])
    assert result.exit_code == 1 and result.output.startswith("Error: --datetime 2023-13-01/..")


def test_tests_cannot_reach_the_internet():
    import socket

    with pytest.raises(OSError, match="may not reach the internet"):
        socket.create_connection(("192.0.2.1", 80), timeout=1)
