"""Shared fixtures: one small demo city generated once per test session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lczmap.demo import generate
from lczmap.stage import BANDS


@pytest.fixture(scope="session")
def demo_city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a 3 km demo city (seed 1) with city.yaml, Sentinel-2 SAFE, DSM/DTM, WorldCover, OSM, VHR, truth."""
    folder = tmp_path_factory.mktemp("demo") / "city"
    generate(folder, seed=1, size_km=3)
    return folder


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
