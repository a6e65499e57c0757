"""AOI reading and the city grids: UTM choice, alignment, padding, awkward AOIs."""

import json

import numpy as np
import pytest
from odc.geo.geom import Geometry, box

from lczmap.aoi import read_aoi
from lczmap.errors import LczmapError
from lczmap.grid import city_grid


def write_geojson(path, geometries, crs=None):
    doc = {"type": "FeatureCollection",
           "features": [{"type": "Feature", "properties": {}, "geometry": g} for g in geometries]}
    if crs:
        doc["crs"] = {"type": "name", "properties": {"name": crs}}
    path.write_text(json.dumps(doc))
    return path


def square(lon, lat, d=0.03):
    return {"type": "Polygon", "coordinates": [[[lon, lat], [lon + d, lat], [lon + d, lat + d], [lon, lat + d], [lon, lat]]]}


@pytest.mark.parametrize("lon,lat,epsg", [
    (127.0, 37.5, 32652),     # Seoul: zone 52 north
    (-46.6, -23.6, 32723),    # Sao Paulo: zone 23 south
    (5.3, 60.4, 32632),       # Bergen: the Norway exception moves it to zone 32
    (-0.1, 51.5, 32630),      # London: west of Greenwich
])
def test_utm_zone(tmp_path, lon, lat, epsg):
    grid = city_grid(read_aoi(write_geojson(tmp_path / "aoi.geojson", [square(lon, lat)])))
    assert grid.crs.epsg == epsg


def test_output_cells_align_with_base_blocks(tmp_path):
    grid = city_grid(read_aoi(write_geojson(tmp_path / "aoi.geojson", [square(127.0, 37.5)])))
    out, base = grid.output, grid.base
    assert out.resolution.x == 100 and base.resolution.x == 10 and grid.factor == 10
    # Output origin snapped to whole 100 m; base origin = output origin minus the halo.
    assert out.affine.c % 100 == 0 and out.affine.f % 100 == 0
    assert base.affine.c == out.affine.c - grid.halo * 10
    assert base.affine.f == out.affine.f + grid.halo * 10
    assert base.shape == (out.shape[0] * 10 + 2 * grid.halo, out.shape[1] * 10 + 2 * grid.halo)
    # Every output cell's corner is a base pixel corner.
    for i, j in [(0, 0), (3, 7), (out.shape[0] - 1, out.shape[1] - 1)]:
        x, y = out.affine * (j, i)
        col, row = ~base.affine * (x, y)
        assert (row, col) == (grid.halo + 10 * i, grid.halo + 10 * j)


@pytest.mark.parametrize("patch", [48, 32])
def test_every_patch_window_is_centred_and_inside_the_base_grid(tmp_path, patch):
    grid = city_grid(read_aoi(write_geojson(tmp_path / "aoi.geojson", [square(127.0, 37.5)])), patch=patch)
    h, w = grid.output.shape
    rows, cols = grid.window(slice(0, h), slice(0, w), patch)
    assert rows.start >= 0 and cols.start >= 0
    assert rows.stop <= grid.base.shape[0] and cols.stop <= grid.base.shape[1]
    # The window of cell (i, j) is centred on the cell's centre.
    i, j = 2, 5
    r0 = grid.patch_start(patch) + i * grid.factor
    c0 = grid.patch_start(patch) + j * grid.factor
    centre_base = grid.base.affine * (c0 + patch / 2, r0 + patch / 2)
    centre_cell = grid.output.affine * (j + 0.5, i + 0.5)
    np.testing.assert_allclose(centre_base, centre_cell)


def test_output_covers_aoi_and_mask_matches(tmp_path):
    aoi = read_aoi(write_geojson(tmp_path / "aoi.geojson", [square(127.0, 37.5)]))
    grid = city_grid(aoi)
    assert grid.output.extent.contains(grid.aoi)
    # A 0.03 degree square is ~2.6 x 3.3 km: the mask's area matches the AOI's.
    assert grid.aoi_mask.sum() * 0.01 == pytest.approx(grid.aoi.area / 1e6, rel=0.05)


def test_resolution_and_crs_overrides(tmp_path):
    aoi = read_aoi(write_geojson(tmp_path / "aoi.geojson", [square(127.0, 37.5)]))
    grid = city_grid(aoi, resolution=50, crs="EPSG:5186")  # Korea 2000 / Central Belt 2010
    assert grid.crs.epsg == 5186 and grid.factor == 5 and grid.output.resolution.x == 50
    with pytest.raises(LczmapError, match="multiple of the 10 m"):
        city_grid(aoi, resolution=105)
    with pytest.raises(LczmapError, match="projected CRS"):
        city_grid(aoi, crs="EPSG:4326")


def test_aoi_in_a_projected_crs(tmp_path):
    poly = box(323000, 4150000, 326000, 4153000, "EPSG:32652")
    path = write_geojson(tmp_path / "aoi.geojson", [poly.json], crs="urn:ogc:def:crs:EPSG::32652")
    grid = city_grid(read_aoi(path))
    assert grid.crs.epsg == 32652
    assert grid.output.boundingbox.left == 323000 and grid.output.shape == (30, 30)


def test_antimeridian_aoi_is_one_compact_grid(tmp_path):
    west = square(179.97, -17.8, 0.03)
    east = {"type": "Polygon", "coordinates": [[[-180, -17.8], [-179.97, -17.8], [-179.97, -17.77], [-180, -17.77], [-180, -17.8]]]}
    grid = city_grid(read_aoi(write_geojson(tmp_path / "aoi.geojson", [west, east])))
    assert grid.crs.epsg in (32701, 32760)  # southern hemisphere, a zone next to 180
    width_km = grid.output.shape[1] * 0.1
    assert 5 < width_km < 8  # 0.06 degrees of longitude, not 360


def test_multi_part_aoi_is_unioned(tmp_path):
    path = write_geojson(tmp_path / "aoi.geojson", [square(127.0, 37.5, 0.01), square(127.02, 37.5, 0.01)])
    grid = city_grid(read_aoi(path))
    assert grid.aoi.geom.geom_type == "MultiPolygon"
    assert 0.3 < grid.aoi_mask.mean() < 0.8  # the gap between the parts is outside the AOI


def test_self_intersecting_aoi_is_repaired(tmp_path, caplog):
    bowtie = {"type": "Polygon", "coordinates": [[[127.0, 37.5], [127.03, 37.53], [127.03, 37.5], [127.0, 37.53], [127.0, 37.5]]]}
    aoi = read_aoi(write_geojson(tmp_path / "aoi.geojson", [bowtie]))
    assert aoi.geom.is_valid and aoi.area > 0
    assert "repaired" in caplog.text


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid GeoJSON"),
    (json.dumps({"type": "FeatureCollection", "features": []}), "no features"),
    (json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [127, 37]}}]}), "polygons only"),
])
def test_bad_aoi_is_refused_with_its_name(tmp_path, content, message):
    path = tmp_path / "bad.geojson"
    path.write_text(content)
    with pytest.raises(LczmapError, match=message) as info:
        read_aoi(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_aoi(tmp_path):
    with pytest.raises(LczmapError, match="does not exist"):
        read_aoi(tmp_path / "nope.geojson")


def test_huge_aoi_goes_to_the_region_path(tmp_path):
    from lczmap.region import needs_region

    path = write_geojson(tmp_path / "aoi.geojson", [square(120, 30, 6.0)])
    assert needs_region(read_aoi(path))  # no longer refused: mapped in tiles (lczmap.region)
    assert not needs_region(read_aoi(write_geojson(tmp_path / "city.geojson", [square(127.0, 37.5)])))


def test_geometry_roundtrip_keeps_crs(tmp_path):
    aoi = read_aoi(write_geojson(tmp_path / "aoi.geojson", [square(127.0, 37.5)]))
    assert isinstance(aoi, Geometry) and aoi.crs.epsg == 4326
