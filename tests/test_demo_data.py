"""The demo city generator: real file formats, a loadable city.yaml, determinism, and rasters consistent with the truth."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from click.testing import CliRunner
from pyproj import Transformer
from rasterio.enums import ColorInterp
from rasterio.features import rasterize
from rasterio.warp import Resampling, reproject

from lczmap.aoi import read_aoi
from lczmap.classes import colormap
from lczmap.cli import cli
from lczmap.config import load_city_config
from lczmap.demo import generate
from lczmap.errors import LczmapError
from lczmap.grid import city_grid

WORLDCOVER_CODES = {10, 20, 30, 40, 50, 60, 80, 90}


@pytest.fixture(scope="module")
def config(demo_city_config):
    return load_city_config(demo_city_config)


@pytest.fixture(scope="module")
def osm_buildings(config):
    """Building footprints as osmnx reads them (parsing the XML takes seconds: once per module)."""
    import osmnx as ox

    return ox.features_from_xml(config.osm, tags={"building": True})


@pytest.fixture(scope="module")
def truth(config):
    with rasterio.open(config.truth) as src:
        return src.read(1), src.profile


def band_path(safe: Path, band: str, res: int) -> Path:
    (path,) = safe.glob(f"GRANULE/L2A_T*/IMG_DATA/R{res}m/T*_{band}_{res}m.jp2")
    return path


def on_truth_grid(path: Path, truth_profile, resampling=Resampling.average) -> np.ndarray:
    """A raster's first band averaged onto the 100 m truth grid."""
    out = np.zeros((truth_profile["height"], truth_profile["width"]), np.float32)
    with rasterio.open(path) as src:
        reproject(rasterio.band(src, 1), out, dst_transform=truth_profile["transform"], dst_crs=truth_profile["crs"],
                  resampling=resampling)
    return out


def reflectance(safe: Path, band: str, res: int, truth_profile) -> np.ndarray:
    return (on_truth_grid(band_path(safe, band, res), truth_profile) - 1000) / 10000


def test_city_yaml_loads_and_names_every_input(config, demo_city):
    for key in ("aoi", "sentinel2", "dsm", "dtm", "landcover", "osm", "vhr", "reference", "truth"):
        path = getattr(config, key)
        assert path is not None and path.exists(), key
        assert path.parent == demo_city
    assert config.landcover_scheme == "worldcover"
    assert config.reference_column == "lcz"
    assert config.sentinel2.name.startswith("S2B_MSIL2A_") and "_N0510_R060_T" in config.sentinel2.name
    assert not list(demo_city.parent.glob(".*demo-tmp*")), "temporary build folder left behind"


def test_aoi_is_a_lonlat_polygon_in_korea_or_perth(config):
    doc = json.loads(config.aoi.read_text())
    geom = shapely.geometry.shape(doc["features"][0]["geometry"])
    assert geom.geom_type == "Polygon" and geom.is_valid
    lon, lat = geom.centroid.x, geom.centroid.y
    assert (33 < lat < 39 and 125 < lon < 130) or (-33 < lat < -31 and 115 < lon < 117)
    # About 3 km across (the square's corners are kept).
    grid = city_grid(read_aoi(config.aoi))
    minx, miny, maxx, maxy = grid.aoi.boundingbox
    assert 2900 < maxx - minx < 3100 and 2900 < maxy - miny < 3100


def test_truth_lies_on_the_city_grid_with_wudapt_colours(config, truth):
    data, profile = truth
    grid = city_grid(read_aoi(config.aoi))
    assert profile["crs"] == rasterio.crs.CRS.from_wkt(grid.crs.to_wkt())
    assert profile["transform"] == grid.output.affine
    assert data.shape == grid.output.shape
    assert profile["dtype"] == "uint8" and profile["nodata"] == 0
    assert np.all(data[~grid.aoi_mask] == 0) and np.all(data[grid.aoi_mask] > 0)
    assert set(np.unique(data)) <= set(range(18))
    with rasterio.open(config.truth) as src:
        assert src.descriptions == ("lcz",)
        assert src.colormap(1)[2] == colormap()[2]


def test_truth_has_a_city_structure(truth):
    data, _ = truth
    present = set(np.unique(data)) - {0}
    assert {1, 2, 3, 9, 11, 14, 17} <= present
    # Zones are blocks of several cells: most pairs of neighbouring cells (inside the AOI) share their class.
    pairs = np.concatenate([np.stack([data[:-1], data[1:]], -1).reshape(-1, 2),
                            np.stack([data[:, :-1], data[:, 1:]], -1).reshape(-1, 2)])
    pairs = pairs[(pairs > 0).all(1)]
    assert np.mean(pairs[:, 0] == pairs[:, 1]) > 0.65


@pytest.mark.parametrize(
    ("key", "driver", "crs", "res", "count", "dtype"),
    [
        ("dsm", "GTiff", "EPSG:4326", 1 / 3600, 1, "float32"),
        ("dtm", "GTiff", "EPSG:4326", 1 / 3600, 1, "float32"),
        ("landcover", "GTiff", "EPSG:4326", 1 / 12000, 1, "uint8"),
        ("vhr", "GTiff", "utm", 2.0, 3, "uint8"),
    ],
)
def test_ancillary_rasters_open_with_the_expected_grid(config, truth, key, driver, crs, res, count, dtype):
    _, truth_profile = truth
    with rasterio.open(getattr(config, key)) as src:
        assert src.driver == driver
        assert src.crs == (truth_profile["crs"] if crs == "utm" else rasterio.crs.CRS.from_string(crs))
        assert src.res == pytest.approx((res, res), rel=1e-9)
        assert src.count == count and src.dtypes[0] == dtype
        # Each raster covers the whole output grid.
        left, bottom, right, top = rasterio.warp.transform_bounds(src.crs, truth_profile["crs"], *src.bounds)
        t = truth_profile["transform"]
        assert left <= t.c and top >= t.f
        assert right >= t.c + truth_profile["width"] * t.a and bottom <= t.f + truth_profile["height"] * t.e
        if key == "vhr":
            assert src.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
            assert src.profile["tiled"] and src.compression == rasterio.enums.Compression.deflate
        if key == "landcover":
            assert set(np.unique(src.read(1))) <= WORLDCOVER_CODES | {0}
            assert {10, 50, 80} <= set(np.unique(src.read(1)))


@pytest.mark.parametrize(("band", "res"), [("B02", 10), ("B03", 10), ("B04", 10), ("B08", 10), ("B05", 20),
                                           ("B06", 20), ("B07", 20), ("B8A", 20), ("B11", 20), ("B12", 20)])
def test_sentinel2_bands_are_jp2_on_an_offset_tile_grid(config, truth, band, res):
    _, truth_profile = truth
    with rasterio.open(band_path(config.sentinel2, band, res)) as src:
        assert src.driver == "JP2OpenJPEG"
        assert src.crs == truth_profile["crs"] and src.res == (res, res) and src.dtypes[0] == "uint16"
        t = truth_profile["transform"]
        # Covers the AOI's grid plus >= 500 m, and is not aligned with the 10 m processing grid.
        assert src.bounds.left <= t.c - 500 and src.bounds.top >= t.f + 500
        assert src.bounds.right >= t.c + truth_profile["width"] * 100 + 500
        assert src.bounds.bottom <= t.f - truth_profile["height"] * 100 - 500
        assert src.bounds.left % 10 != 0 and src.bounds.top % 10 != 0
        dn = src.read(1)
    assert dn.min() >= 1  # 0 is nodata and there is none inside the subset
    assert 0.02 < np.median((dn - 1000) / 10000) < 0.4  # plausible surface reflectance


def test_product_metadata_has_baseline_04_and_offsets(config):
    root = ET.parse(config.sentinel2 / "MTD_MSIL2A.xml").getroot()
    assert root.find("./*/Product_Info/PROCESSING_BASELINE").text == "04.00"
    assert root.find(".//BOA_QUANTIFICATION_VALUE").text == "10000"
    offsets = {e.get("band_id"): int(e.text) for e in root.iter("BOA_ADD_OFFSET")}
    assert offsets == {str(k): -1000 for k in range(13)}
    files = [e.text for e in root.iter("IMAGE_FILE")]
    assert len(files) == 14
    for f in files:
        assert (config.sentinel2 / (f + ".jp2")).exists(), f
    tile = ET.parse(next(config.sentinel2.glob("GRANULE/*/MTD_TL.xml"))).getroot()
    with rasterio.open(config.truth) as src:
        assert tile.find(".//HORIZONTAL_CS_CODE").text == f"EPSG:{src.crs.to_epsg()}"


def test_scene_classification_has_a_few_percent_clouds_and_their_shadows(config):
    with rasterio.open(band_path(config.sentinel2, "SCL", 20)) as src:
        assert src.driver == "JP2OpenJPEG" and src.res == (20, 20)
        scl = src.read(1)
    share = {c: np.mean(scl == c) for c in range(12)}
    assert 0.005 < share[8] + share[9] < 0.08
    assert share[3] > 0.002
    assert share[4] > 0.2 and share[5] > 0.05 and share[6] > 0.005
    # Clouds are bright in the blue band.
    with rasterio.open(band_path(config.sentinel2, "B02", 20)) as src:
        blue = (src.read(1) - 1000) / 10000
    assert blue[scl == 9].mean() > 0.3 > blue[scl == 4].mean()


def test_osm_extract_reads_with_osmnx(config, osm_buildings):
    import osmnx as ox

    buildings = osm_buildings
    assert len(buildings) > 1000
    assert (buildings.geometry.geom_type == "Polygon").all()
    assert {"yes", "house", "apartments", "industrial"} <= set(buildings["building"])
    assert buildings["height"].notna().mean() > 0.15
    assert buildings["building:levels"].notna().mean() > 0.15
    graph = ox.graph_from_xml(config.osm)
    assert len(graph) > 50 and len(graph.edges) > 100
    kinds = set()
    for _, _, d in graph.edges(data=True):  # simplified edges may merge ways of several kinds into a list
        kinds.update(d["highway"] if isinstance(d["highway"], list) else [d["highway"]])
    assert {"primary", "residential"} <= kinds


def test_osm_pbf_matches_the_xml(config):
    osmium = pytest.importorskip("osmium")
    pbf = config.osm.with_name(config.osm.name + ".pbf")

    def counts(path):
        n = {"n": 0, "w": 0, "r": 0, "building": 0}
        for obj in osmium.FileProcessor(str(path)):
            n[obj.type_str()] += 1
            n["building"] += "building" in obj.tags
        return n

    assert counts(pbf) == counts(config.osm)


def test_osm_buildings_denser_in_compact_classes_than_in_sparse(osm_buildings, truth):
    data, profile = truth
    footprints = osm_buildings.to_crs(profile["crs"])
    fine = rasterize(footprints.geometry, out_shape=(data.shape[0] * 10, data.shape[1] * 10),
                     transform=profile["transform"] * rasterio.Affine.scale(0.1), dtype="uint8")
    fraction = fine.reshape(data.shape[0], 10, data.shape[1], 10).mean(axis=(1, 3))
    compact = fraction[np.isin(data, (1, 2, 3))].mean()
    sparse = fraction[data == 9].mean()
    natural = fraction[np.isin(data, (11, 13, 14))].mean()
    assert compact > 0.3 and compact > 2 * sparse and sparse > natural


def test_sentinel2_reflectance_matches_land_cover(config, truth):
    data, profile = truth
    red = reflectance(config.sentinel2, "B04", 10, profile)
    nir = reflectance(config.sentinel2, "B08", 10, profile)
    ndvi = (nir - red) / (nir + red)
    assert ndvi[data == 11].mean() > ndvi[data == 2].mean() + 0.3
    # Medians: a cloud may lie over some of the water.
    assert np.median(nir[data == 17]) < 0.1 < np.median(nir[data == 11])
    swir = reflectance(config.sentinel2, "B11", 20, profile)
    assert np.median(swir[data == 17]) < 0.05


def test_surface_height_is_tallest_in_high_rise_classes(config, truth):
    data, profile = truth
    height = on_truth_grid(config.dsm, profile) - on_truth_grid(config.dtm, profile)
    tall = height[np.isin(data, (1, 4))].mean()
    low = height[np.isin(data, (3, 6))].mean()
    assert tall > 10 and tall > 2 * low
    with rasterio.open(config.dtm) as src:
        dtm = src.read(1)
    assert np.isfinite(dtm).all() and dtm.std() > 1  # terrain with relief


def test_reference_polygons_lie_on_cells_of_their_class(config, truth):
    data, profile = truth
    doc = json.loads(config.reference.read_text())
    to_grid = Transformer.from_crs("EPSG:4326", profile["crs"], always_xy=True)
    classes = []
    covered = np.zeros(data.shape, bool)
    for feature in doc["features"]:
        code = feature["properties"]["lcz"]
        assert isinstance(code, int) and 1 <= code <= 17
        poly = shapely.transform(shapely.geometry.shape(feature["geometry"]),
                                 lambda xy: np.column_stack(to_grid.transform(xy[:, 0], xy[:, 1])))
        cells = rasterize([poly], out_shape=data.shape, transform=profile["transform"], all_touched=True).astype(bool)
        assert cells.any() and np.all(data[cells] == code), f"training area of LCZ {code} on other classes"
        covered |= cells
        classes.append(code)
    assert len(set(classes)) >= 8
    assert max(classes.count(c) for c in set(classes)) >= 3
    assert covered.sum() < 0.5 * np.count_nonzero(data)


def test_same_seed_same_city_other_seed_other_city(tmp_path):
    def read(folder: Path):
        cfg = load_city_config(folder / "city.yaml")
        with rasterio.open(cfg.truth) as src:
            t = src.read(1)
        bands = []
        for band, res in (("B02", 10), ("B11", 20), ("SCL", 20)):
            with rasterio.open(band_path(cfg.sentinel2, band, res)) as src:
                bands.append(src.read(1))
        return cfg, t, bands

    generate(tmp_path / "a", seed=7, size_km=1.5)
    generate(tmp_path / "b", seed=7, size_km=1.5)
    cfg_a, truth_a, bands_a = read(tmp_path / "a")
    cfg_b, truth_b, bands_b = read(tmp_path / "b")
    assert np.array_equal(truth_a, truth_b)
    assert all(np.array_equal(x, y) for x, y in zip(bands_a, bands_b, strict=True))
    for key in ("osm", "reference", "dsm", "landcover"):
        assert getattr(cfg_a, key).read_bytes() == getattr(cfg_b, key).read_bytes(), key

    # Regenerating into the same folder with another seed replaces every file (and the old SAFE product).
    generate(tmp_path / "a", seed=8, size_km=1.5)
    cfg_c, truth_c, _ = read(tmp_path / "a")
    assert truth_c.shape != truth_a.shape or not np.array_equal(truth_c, truth_a)
    assert len(list((tmp_path / "a").glob("*.SAFE"))) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_cli_demo_data(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["demo-data", str(tmp_path / "city"), "--seed", "3", "--size-km", "1.5"])
    assert result.exit_code == 0, result.output
    assert Path(result.stdout.strip()) == tmp_path / "city" / "city.yaml"  # log lines go to stderr
    assert load_city_config(tmp_path / "city" / "city.yaml").truth.exists()

    bad = runner.invoke(cli, ["demo-data", str(tmp_path / "x"), "--size-km", "0.2"])
    assert bad.exit_code == 1
    assert bad.output.strip().splitlines() == ["Error: --size-km 0.2: the demo city must be 1-40 km across"]
    assert not (tmp_path / "x").exists()


def test_realism_knobs_change_only_their_part(tmp_path):
    base = load_city_config(generate(tmp_path / "base", seed=5, size_km=1.5))
    clear = load_city_config(generate(tmp_path / "clear", seed=5, size_km=1.5, cloud_cover=(0.0, 0.0), osm_missing=0.0))
    with rasterio.open(base.truth) as a, rasterio.open(clear.truth) as b:
        assert np.array_equal(a.read(1), b.read(1))  # same city
    with rasterio.open(band_path(clear.sentinel2, "SCL", 20)) as src:
        assert not np.isin(src.read(1), (3, 8, 9)).any()
    with rasterio.open(band_path(base.sentinel2, "SCL", 20)) as src:
        assert np.isin(src.read(1), (8, 9)).any()
    assert clear.osm.stat().st_size > base.osm.stat().st_size  # no buildings left out

    with pytest.raises(LczmapError, match="unknown realism knobs"):
        generate(tmp_path / "bad", seed=5, size_km=1.5, noise=0.1)
    assert not (tmp_path / "bad").exists()
