"""A region across a UTM zone edge, mapped with the shipped demo model: the per-zone (`--tiles`) area table counts
each place once although tile cores overlap by a cell across the edge, so it agrees with the mosaic's; the mosaic
has a quicklook like a city's map, the per-zone output none."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import rasterio
from odc.geo.geobox import GeoBox

import lczmap.demo
from lczmap.card import DEFAULT_MODEL
from lczmap.config import load_city_config
from lczmap.demo.layout import Place
from lczmap.mosaic import LCZ_FILTER, STATUS, block_areas, cell_areas_km2
from lczmap.grid import in_zone_strip, zone_strip
from lczmap.region import map_region, plan_region

EDGE_LON = 126.0  # the meridian between UTM zones 51 and 52


@pytest.fixture(scope="module")
def edge_region(tmp_path_factory):
    """A 3 km demo city centred on 126 E, mapped as a region of 2 km tiles: the EPSG:4326 mosaic, then `--tiles`."""
    folder = tmp_path_factory.mktemp("edge")
    with pytest.MonkeyPatch.context() as mp:  # the demo's places lie far from a zone edge: put this one on it
        mp.setattr(lczmap.demo, "choose_place", lambda rng: (Place("edge", 37.0, EDGE_LON, 30.0), "20230516"))
        lczmap.demo.generate(folder / "city", seed=1, size_km=3)
    config = load_city_config(folder / "city" / "city.yaml")
    out = folder / "region.tif"
    mosaic = map_region(plan_region(config, out, model=DEFAULT_MODEL, tile_km=2), progress=False)
    plan = plan_region(config, out, model=DEFAULT_MODEL, tile_km=2, tiles_output=True)
    tiles = map_region(plan, progress=False)  # the same tiles, reused
    return folder, plan, mosaic, tiles


def test_zone_strips_are_half_open_so_a_place_on_the_edge_is_in_one_zone():
    assert zone_strip(32651) == (120.0, 0.0, 126.0, 84.0) and zone_strip(32752) == (126.0, -80.0, 132.0, 0.0)
    # one 100 m cell centred on the meridian, in each zone's grid: it belongs to zone 52 only
    for epsg, expected in ((32651, False), (32652, True)):
        x, y = rasterio.warp.transform("EPSG:4326", f"EPSG:{epsg}", [EDGE_LON], [37.0])
        box = GeoBox((1, 1), rasterio.Affine(100, 0, x[0] - 50, 0, -100, y[0] + 50), f"EPSG:{epsg}")
        assert in_zone_strip(box, epsg)[0, 0] == expected


@pytest.mark.slow
def test_per_zone_areas_count_the_zone_edge_once_and_agree_with_the_mosaic(edge_region):
    _, plan, mosaic, tiles = edge_region
    assert tiles["zones"] == mosaic["zones"] == [32651, 32652]
    # The tile cores do overlap across the meridian (one cell each way, so the mosaic has no gap there): summed
    # without the zone rule, the tiles' areas would count that strip twice.
    overlapping = 0.0
    for tile in plan.tiles:
        with rasterio.open(plan.spec.tile_path(tile)) as src:
            data = src.read()
            overlapping += block_areas(data[LCZ_FILTER], data[STATUS], cell_areas_km2(GeoBox(src.shape, src.transform, src.crs)))[1:].sum()
    assert overlapping > 1.03 * mosaic["aoi_km2"]
    # Each place counted once: the per-zone table agrees with the mosaic's (EPSG:4326 cells on the ellipsoid).
    assert tiles["aoi_km2"] == pytest.approx(mosaic["aoi_km2"], rel=0.01)
    assert tiles["mapped_km2"] == pytest.approx(mosaic["mapped_km2"], rel=0.01)
    per_class = np.array([[s["classes"][str(c)]["km2"] for c in range(1, 18)] for s in (tiles, mosaic)])
    assert np.abs(per_class[0] - per_class[1]).sum() < 0.03 * mosaic["mapped_km2"]


@pytest.mark.slow
def test_the_mosaic_has_a_quicklook_and_the_per_zone_output_none(edge_region):
    folder, _, mosaic, tiles = edge_region
    png = folder / "region.png"
    assert mosaic["outputs"]["quicklook"] == "region.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png.read_bytes()[16:24])  # the IHDR chunk
    assert width > 200 and height > 200
    assert json.loads((folder / "region.summary.json").read_text())["outputs"] == tiles["outputs"]  # the later run's
    assert not any(name.endswith(".png") for name in tiles["outputs"].values())
    assert not list(folder.glob(".*.tmp*"))  # nothing left beside the outputs
