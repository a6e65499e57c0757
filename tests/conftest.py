"""Shared fixtures: one small demo city generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from lczmap.demo import generate


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
