"""Shared fixtures: one small demo city generated once per test session."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import numpy as np
import pytest

from lczmap.demo import generate
from lczmap.demo.catalog import write_catalog
from lczmap.stage import BANDS
from servers import FileServer, StacApiServer


def _local_only(connect):
    """socket.connect (or connect_ex) that refuses every address but loopback and Unix sockets."""
    def guarded(self: socket.socket, address, *args):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            try:
                local = host == "localhost" or ipaddress.ip_address(host.split("%")[0]).is_loopback
            except ValueError:
                local = False
            if not local:
                raise OSError(f"tests may not reach the internet (connect to {host} refused by tests/conftest.py)")
        return connect(self, address, *args)
    return guarded


@pytest.fixture(scope="session", autouse=True)
def no_internet():
    """The whole suite: Python sockets connect to loopback and Unix sockets only, so no test reaches the internet by
    accident (the fetch tests run real servers on 127.0.0.1). GDAL's own curl connections are not Python sockets:
    the fetch tests point every URL at 127.0.0.1."""
    saved = socket.socket.connect, socket.socket.connect_ex
    socket.socket.connect, socket.socket.connect_ex = _local_only(saved[0]), _local_only(saved[1])
    yield
    socket.socket.connect, socket.socket.connect_ex = saved


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory: pytest.TempPathFactory):
    """$LCZMAP_CACHE is a folder of this session (of each worker with pytest-xdist), so the suite never writes into the
    user's cache nor shares one between workers; tests that need an empty cache set their own."""
    saved = os.environ.get("LCZMAP_CACHE")
    os.environ["LCZMAP_CACHE"] = str(tmp_path_factory.mktemp("lczmap-cache"))
    yield
    if saved is None:
        os.environ.pop("LCZMAP_CACHE", None)
    else:
        os.environ["LCZMAP_CACHE"] = saved


@pytest.fixture(scope="session")
def demo_city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a 3 km demo city (seed 1) with city.yaml, Sentinel-2 SAFE, DSM/DTM, WorldCover, OSM, VHR, truth."""
    folder = tmp_path_factory.mktemp("demo") / "city"
    generate(folder, seed=1, size_km=3)
    return folder


@pytest.fixture(scope="session")
def catalog_city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3 km demo city with 3 Sentinel-2 scenes (seed 1) and its catalog/ (`lczmap demo-data --catalog`)."""
    folder = tmp_path_factory.mktemp("catalog") / "city"
    generate(folder, seed=1, size_km=3, scenes=3)
    write_catalog(folder)
    return folder


@pytest.fixture(scope="session")
def file_server(catalog_city: Path):
    """A Range-capable HTTP file server on 127.0.0.1 serving catalog_city/catalog (faults on demand, a request log)."""
    server = FileServer(catalog_city / "catalog")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def stac_api(catalog_city: Path, file_server: FileServer, tmp_path_factory: pytest.TempPathFactory):
    """rustac's STAC API server on 127.0.0.1 holding catalog_city's Items, assets on `file_server`."""
    server = StacApiServer(catalog_city / "catalog", file_server.url, tmp_path_factory.mktemp("stac-api"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def demo_city_config(demo_city: Path) -> Path:
    """The demo city's city.yaml."""
    return demo_city / "city.yaml"


def assert_same_stack(a: np.ndarray, b: np.ndarray) -> None:
    """Two reads of one stack window made in different windows: identical, except that reprojected sources (the
    demo's EPSG:4326 DSM and land cover) go through GDAL's approximate transformer (within 10 cm,
    lczmap.sources.base.WARP_TOLERANCE), which depends on the window: heights within 0.5 m, land-cover classes
    changed only on the few pixels whose centre lies that close to a source pixel edge."""
    warped = [BANDS.index("dsm"), BANDS.index("landcover")]
    same = [k for k in range(a.shape[0]) if k not in warped]
    np.testing.assert_array_equal(a[same], b[same])
    assert (np.isnan(a[warped]) == np.isnan(b[warped])).mean() > 0.999
    heights = np.isfinite(a[warped[0]]) & np.isfinite(b[warped[0]])
    assert not heights.any() or np.abs(a[warped[0]] - b[warped[0]])[heights].max() < 0.5
    classes = np.isfinite(b[warped[1]])
    assert not classes.any() or (a[warped[1]] != b[warped[1]])[classes].mean() < 0.01
