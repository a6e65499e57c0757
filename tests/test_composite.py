"""Several Sentinel-2 products per city: the multi-scene demo city, per-pixel composites (median, best), valid_count,
the per-product report, bad products skipped or refused, a neighbouring UTM zone, and a static local STAC catalog."""

from __future__ import annotations

import datetime
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from click.testing import CliRunner
from rasterio.warp import Resampling, calculate_default_transform, reproject

from lczmap.aoi import read_aoi
from lczmap.cli import cli
from lczmap.config import load_city_config
from lczmap.demo import generate
from lczmap.demo.sentinel2_safe import mgrs_tile
from lczmap.errors import LczmapError
from lczmap.fetch.stac import write_items
from lczmap.grid import city_grid
from lczmap.sources import S2_BANDS, open_sentinel2
from lczmap.sources.sentinel2 import composite as s2_composite
from lczmap.stage import VALID_COUNT, open_stack, plan_stage, read_chunk, write_stack, stack_from_plan

pytestmark = pytest.mark.filterwarnings("ignore:Dataset has no geotransform")

SEED, SIZE_KM = 1, 2.5


@pytest.fixture(scope="module")
def city3(tmp_path_factory) -> Path:
    """A three-scene demo city (2.5 km): a clear leaf-on scene, a cloudier winter scene, a mostly cloudy partial one."""
    folder = tmp_path_factory.mktemp("city3") / "city"
    generate(folder, seed=SEED, size_km=SIZE_KM, scenes=3)
    return folder


@pytest.fixture(scope="module")
def config(city3):
    return load_city_config(city3 / "city.yaml")


@pytest.fixture(scope="module")
def grid(config):
    return city_grid(read_aoi(config.aoi))


@pytest.fixture(scope="module")
def singles(config, grid) -> dict[str, np.ndarray]:
    """Each product read on its own through the single-product reader (SCL-masked), keyed by path."""
    return {str(p): open_sentinel2(p, grid.aoi).read(grid.base) for p in config.sentinel2}


def whole(plan, grid) -> np.ndarray:
    return read_chunk(plan, slice(0, grid.base.shape[0]), slice(0, grid.base.shape[1]))


def scl_of(safe: Path) -> np.ndarray:
    with rasterio.open(next(safe.glob("GRANULE/*/IMG_DATA/R20m/*_SCL_20m.jp2"))) as src:
        return src.read(1)


def band_of(safe: Path, band: str, res: int) -> np.ndarray:
    with rasterio.open(next(safe.glob(f"GRANULE/*/IMG_DATA/R{res}m/*_{band}_{res}m.jp2"))) as src:
        return (src.read(1).astype("float32") - 1000) / 10000


# ---- the multi-scene demo city ------------------------------------------------------------------------

def test_demo_city_lists_products_of_one_tile_on_different_dates(config, city3, tmp_path):
    safes = config.sentinel2
    assert isinstance(safes, tuple) and len(safes) == 3
    assert all(p.parent == city3 and p.name.endswith(".SAFE") for p in safes)
    days = [p.name.split("_")[2][:8] for p in safes]
    tiles = {p.name.split("_")[5] for p in safes}
    assert len(set(days)) == 3 and len(tiles) == 1
    # The first product is the one-scene city's product of the same seed: seeds keep their meaning.
    single = load_city_config(generate(tmp_path / "one", seed=SEED, size_km=SIZE_KM, scenes=1))
    assert isinstance(single.sentinel2, Path) and single.sentinel2.name == safes[0].name
    for band in ("B02", "B11", "SCL"):
        res = 20 if band != "B02" else 10
        a = next(safes[0].glob(f"GRANULE/*/IMG_DATA/R{res}m/*_{band}_{res}m.jp2"))
        b = next(single.sentinel2.glob(f"GRANULE/*/IMG_DATA/R{res}m/*_{band}_{res}m.jp2"))
        with rasterio.open(a) as x, rasterio.open(b) as y:
            assert np.array_equal(x.read(1), y.read(1)), band


def test_scenes_differ_in_clouds_season_and_swath_and_scl_agrees(config):
    scls = [scl_of(p) for p in config.sentinel2]
    cloud = [np.isin(s, (3, 8, 9)).sum() / max((s != 0).sum(), 1) for s in scls]
    assert cloud[0] < 0.1 and max(cloud[1:]) > 0.3  # some scenes much cloudier than others
    nodata = [np.mean(s == 0) for s in scls]
    assert nodata[0] == 0 and nodata[-1] > 0.2  # the last one ends at a swath edge inside the image
    for safe, scl in zip(config.sentinel2, scls):
        blue = band_of(safe, "B02", 20)
        assert (blue[scl == 0] < -0.09).all()  # DN 0 (nodata) where the SCL says no data
        if (scl == 9).any():
            assert blue[scl == 9].mean() > 0.3 > blue[scl == 4].mean()  # flagged clouds are the bright pixels
    # Leaf-off winter scene: lower NIR - red contrast over pixels that are clear vegetation in both scenes.
    summer, winter = config.sentinel2[0], config.sentinel2[1]
    veg = (scls[0] == 4) & ~np.isin(scls[1], (0, 3, 8, 9, 10))

    def ndvi(safe):
        nir, red = band_of(safe, "B8A", 20), band_of(safe, "B04", 20)
        return (nir - red) / (nir + red)

    assert np.median(ndvi(winter)[veg]) < np.median(ndvi(summer)[veg]) - 0.1


def test_cli_demo_data_scenes(tmp_path):
    result = CliRunner().invoke(cli, ["demo-data", str(tmp_path / "c"), "--seed", "3", "--size-km", "1.5", "--scenes", "2"])
    assert result.exit_code == 0, result.output
    assert len(load_city_config(tmp_path / "c" / "city.yaml").sentinel2) == 2
    assert len(list((tmp_path / "c").glob("*.SAFE"))) == 2
    bad = CliRunner().invoke(cli, ["demo-data", str(tmp_path / "x"), "--scenes", "0"])
    assert bad.exit_code == 1 and bad.output.strip().splitlines() == ["Error: --scenes 0: a demo city has 1-12 Sentinel-2 products"]


# ---- composites -----------------------------------------------------------------------------------------

def test_median_composite_and_valid_count(config, grid, singles):
    plan = plan_stage(config, grid, valid_count=True)
    assert plan.bands[-1] == VALID_COUNT
    stack = whole(plan, grid)
    obs = np.stack(list(singles.values()))
    valid = np.isfinite(obs).all(axis=1)  # an observation counts when all ten bands are clear
    obs[~np.broadcast_to(valid[:, None], obs.shape)] = np.nan
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        expected = np.nanmedian(obs, axis=0)
    np.testing.assert_allclose(stack[:10], expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(stack[plan.bands.index(VALID_COUNT)], valid.sum(axis=0))
    # Compositing fills most of what the clearest scene alone leaves empty.
    first = np.isfinite(singles[str(config.sentinel2[0])]).all(axis=0)
    assert 1 - valid.any(axis=0).mean() < 0.5 * (1 - first.mean())


def test_best_composite_takes_the_least_cloudy_valid_observation(config, grid, singles):
    plan = plan_stage(config, grid, composite="best")
    composite = plan.sources[0]
    shares = [composite.stats[p.path]["cloud_share"] for p in composite.products]
    assert shares == sorted(shares)  # ranked by cloud share within the AOI
    stack = whole(plan, grid)[:10]
    expected = np.full_like(stack, np.nan)
    for p in reversed(composite.products):  # the best ranked product wins where valid
        obs = singles[p.path]
        ok = np.isfinite(obs).all(axis=0)
        expected[:, ok] = obs[:, ok]
    np.testing.assert_array_equal(stack, expected)
    median = whole(plan_stage(config, grid), grid)[:10]
    assert np.array_equal(np.isfinite(stack), np.isfinite(median))  # same coverage, other values
    assert not np.allclose(stack, median, equal_nan=True)


def test_memory_per_block_is_bounded_by_strips(config, grid, monkeypatch):
    """With a tiny observation budget the block is composited in many row strips, giving the same values."""
    plan = plan_stage(config, grid, valid_count=True)
    window = (slice(10, 150), slice(20, 200))
    full = read_chunk(plan, *window)
    monkeypatch.setattr(s2_composite, "STRIP_BUDGET_BYTES", 3 * 83 * 180 * 7)  # 7 rows of three products
    np.testing.assert_array_equal(read_chunk(plan, *window), full)


def test_staged_report_per_product_and_valid_count_band(config, grid, tmp_path):
    plan = plan_stage(config, grid, valid_count=True)
    out = tmp_path / "stack.zarr"
    report = write_stack(stack_from_plan(plan, 128), out, progress=False)
    s2r = report["sources"]["sentinel2"]
    assert s2r["composite"] == "median" and s2r["observations"] == 3 and s2r["skipped"] == []
    products = s2r["products"]
    assert [p["tile"] for p in products] == [products[0]["tile"]] * 3
    assert len({p["date"] for p in products}) == 3 and all(p["date"].startswith("20") for p in products)
    stack = open_stack(out)
    assert list(stack.data.band.values)[-1] == VALID_COUNT
    count = stack.data.sel(band=VALID_COUNT).values
    aoi = grid.aoi_mask.repeat(10, 0).repeat(10, 1)
    h = grid.halo
    inside = np.zeros(grid.base.shape, bool)
    inside[h:h + aoi.shape[0], h:h + aoi.shape[1]] = aoi
    assert report["valid_fraction"] == pytest.approx((count[inside] > 0).mean(), abs=0.01)
    # median: every valid observation contributes; the shares add up to the mean number of observations
    assert sum(p["contributed"] for p in products) == pytest.approx(count[inside].mean(), abs=0.02)
    for p in products:
        assert abs(p["contributed"] - p["contributed_estimate"]) < 0.05  # the 60 m plan-time estimate is close

    best = write_stack(stack_from_plan(plan_stage(config, grid, composite="best"), 128), tmp_path / "best.tif", progress=False)
    shares = [p["contributed"] for p in best["sources"]["sentinel2"]["products"]]
    assert sum(shares) == pytest.approx(best["valid_fraction"], abs=1e-3) and shares[0] == max(shares)


# ---- product forms, bad products ----------------------------------------------------------------------

def multiband_copy(safe: Path, path: Path, dst_crs: str | None = None, east_m: float = 0.0) -> Path:
    """The product as one 10 m multi-band GeoTIFF (20 m bands repeated 2 x 2), optionally reprojected or moved east."""
    layers = []
    with rasterio.open(next(safe.glob("GRANULE/*/IMG_DATA/R10m/*_B02_10m.jp2"))) as ref:
        crs, transform, shape = ref.crs, ref.transform, ref.shape
    for band in (*S2_BANDS, "SCL"):
        res = 10 if band in ("B02", "B03", "B04", "B08") else 20
        with rasterio.open(next(safe.glob(f"GRANULE/*/IMG_DATA/R{res}m/*_{band}_{res}m.jp2"))) as src:
            data = src.read(1)
        f = shape[0] // data.shape[0]
        layers.append(np.repeat(np.repeat(data, f, 0), f, 1).astype("uint16"))
    data = np.stack(layers)
    if dst_crs is not None:
        dst_transform, w, h = calculate_default_transform(crs, dst_crs, shape[1], shape[0], *rasterio.transform.array_bounds(*shape, transform), resolution=10)
        out = np.zeros((len(layers), h, w), "uint16")
        for k in range(len(layers)):
            reproject(data[k], out[k], src_transform=transform, src_crs=crs, dst_transform=dst_transform, dst_crs=dst_crs,
                      resampling=Resampling.nearest, src_nodata=0, dst_nodata=0)
        data, crs, transform = out, rasterio.crs.CRS.from_user_input(dst_crs), dst_transform
    transform = rasterio.Affine.translation(east_m, 0) * transform
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=len(layers),
                       dtype="uint16", crs=crs, transform=transform, nodata=0) as dst:
        dst.write(data)
        dst.descriptions = (*S2_BANDS, "SCL")
        dst.update_tags(PROCESSING_BASELINE="04.00")
    return path


def baseline_03_copy(safe: Path, dst: Path) -> Path:
    """The product as processing baseline 03.xx made it: no BOA_ADD_OFFSET, so DNs are 1000 lower for the same reflectance."""
    shutil.copytree(safe, dst)
    for jp2 in dst.rglob("*.jp2"):
        if "_SCL_" in jp2.name:
            continue
        with rasterio.open(jp2) as src:
            profile = {k: src.profile[k] for k in ("width", "height", "count", "dtype", "crs", "transform")}
            dn = src.read(1).astype("int32")
        with rasterio.open(jp2, "w", driver="JP2OpenJPEG", **profile, QUALITY="100", REVERSIBLE="YES", YCBCR420="NO") as out:
            out.write(np.where(dn > 0, np.clip(dn - 1000, 1, None), 0).astype("uint16"), 1)
    mtd = dst / "MTD_MSIL2A.xml"
    text = mtd.read_text().replace("<PROCESSING_BASELINE>04.00<", "<PROCESSING_BASELINE>03.01<")
    mtd.write_text("\n".join(line for line in text.splitlines() if "BOA_ADD_OFFSET" not in line))
    return dst


def day_time(safe: Path) -> str:
    return safe.name.split("_")[2]


def test_mixed_baselines_duplicates_and_a_folder_of_products(config, grid, tmp_path, caplog):
    first, winter, partial = config.sentinel2
    # the winter scene as a baseline 03.01 product (no offset) among baseline 04.00 products: each its own rule
    old = baseline_03_copy(winter, tmp_path / "old" / winter.name)
    reference = whole(plan_stage(config, grid), grid)
    mixed = plan_stage(load_city_config(None, aoi=config.aoi, sentinel2=(first, old, partial)), grid)
    assert sorted(p["processing_baseline"] for p in mixed.sources[0].product_facts()) == ["03.01", "04.00", "04.00"]
    got = whole(mixed, grid)[:10]
    assert np.array_equal(np.isfinite(got), np.isfinite(reference[:10]))
    ok = np.isfinite(got)
    assert np.mean(np.abs(got[ok] - reference[:10][ok]) > 1e-5) < 0.01  # all but negative reflectances (clipped at DN 1)

    # duplicates: the same SAFE twice and a copy of the first acquisition (same tile and sensing time) are used once
    tile = first.name.split("_")[5][1:]
    copy = multiband_copy(first, tmp_path / f"T{tile}_{day_time(first)}_copy.tif")
    with caplog.at_level(logging.INFO, logger="lczmap"):
        plan = plan_stage(load_city_config(None, aoi=config.aoi, sentinel2=(first, winter, partial, winter, copy)), grid)
    assert len(plan.sources[0].products) == 3
    assert "duplicate of" in caplog.text and copy.name in caplog.text

    # a folder holding the products (SAFE folders) is the same as listing them
    folder = tmp_path / "products"
    folder.mkdir()
    for safe in config.sentinel2:
        (folder / safe.name).symlink_to(safe, target_is_directory=True)
    np.testing.assert_array_equal(whole(plan_stage(load_city_config(None, aoi=config.aoi, sentinel2=folder), grid), grid)[:10], reference[:10])


def test_bad_products_are_skipped_with_a_warning_naming_them(config, grid, tmp_path, caplog):
    first, winter, partial = config.sentinel2
    no_b11 = tmp_path / ("X" + winter.name[1:])
    shutil.copytree(winter, no_b11, ignore=lambda d, names: [n for n in names if "_B11_" in n])
    tile = first.name.split("_")[5][1:]
    wrong_zone = multiband_copy(first, tmp_path / f"T51{tile[2:]}_{day_time(partial)}.tif")  # says zone 51, is zone 52
    no_scl = tmp_path / "noscl.tif"
    with rasterio.open(multiband_copy(partial, tmp_path / "full.tif")) as src:
        profile, data = src.profile, src.read()[:10]
    profile.update(count=10)
    with rasterio.open(no_scl, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = S2_BANDS
    far = multiband_copy(first, tmp_path / "far.tif", east_m=300_000)  # 300 km east of the city
    with caplog.at_level(logging.INFO, logger="lczmap"):
        plan = plan_stage(load_city_config(None, aoi=config.aoi, sentinel2=(first, no_b11, wrong_zone, no_scl, far)), grid)
    assert [p.path for p in plan.sources[0].products] == [str(first)]
    skipped = {Path(s["path"]).name: s["reason"] for s in plan.sources[0].skipped}
    assert "B11" in skipped[no_b11.name] and "zone 51" in skipped[wrong_zone.name]
    assert "no SCL" in skipped[no_scl.name] and "overlap" in skipped[far.name]
    warnings = {r.getMessage().split(":")[0] for r in caplog.records if r.levelno == logging.WARNING}
    assert {str(no_b11), str(wrong_zone), str(no_scl)} <= warnings
    assert any(r.levelno == logging.INFO and str(far) in r.getMessage() for r in caplog.records)

    # nothing usable: one Error line, nothing written
    out = tmp_path / "stack.zarr"
    result = CliRunner().invoke(cli, ["-q", "stage", "--aoi", str(config.aoi), "--s2", str(no_b11), "--s2", str(far),
                                      "--out", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "none of the 2 Sentinel-2 products is usable" in errors[0], result.output
    assert not out.exists() and not Path(f"{out}.partial").exists()
    result = CliRunner().invoke(cli, ["-q", "stage", "--aoi", str(config.aoi), "--s2", str(far), "--s2", str(far.with_name("far2.tif")),
                                      "--out", str(out)])
    assert result.exit_code == 1 and "far2.tif" in result.output  # a missing file is an error, not a skip
    with pytest.raises(LczmapError, match="--composite mean"):
        plan_stage(config, grid, composite="mean")
    # an AOI that no product touches
    ring = [[10.0, 5.0], [10.02, 5.0], [10.02, 5.02], [10.0, 5.02], [10.0, 5.0]]
    far_aoi = tmp_path / "far.geojson"
    far_aoi.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}]}))
    result = CliRunner().invoke(cli, ["-q", "stage", "--config", str(first.parent / "city.yaml"), "--aoi", str(far_aoi),
                                      "--out", str(out)])
    assert result.exit_code == 1 and "none of the 3 Sentinel-2 products overlaps the AOI" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()


def test_product_in_a_neighbouring_utm_zone_is_reprojected(config, grid, tmp_path):
    first = config.sentinel2[0]
    assert grid.crs.epsg == 32652
    lon, lat = read_aoi(config.aoi).to_crs("EPSG:4326").centroid.points[0]
    from pyproj import Transformer

    x, y = Transformer.from_crs("EPSG:4326", "EPSG:32651", always_xy=True).transform(lon, lat)
    tile = mgrs_tile(51, True, lat, x, y)
    path = multiband_copy(first, tmp_path / f"T{tile}_{day_time(first)}.tif", dst_crs="EPSG:32651")
    plan = plan_stage(load_city_config(None, aoi=config.aoi, sentinel2=(path, config.sentinel2[2])), grid)
    facts = plan.sources[0].product_facts()
    assert {f["crs"] for f in facts} == {"EPSG:32651", "EPSG:32652"} and facts[0]["tile"] == tile
    got = whole(plan_stage(load_city_config(None, aoi=config.aoi, sentinel2=path), grid), grid)[:10]
    ref = whole(plan_stage(load_city_config(None, aoi=config.aoi, sentinel2=first), grid), grid)[:10]
    both = np.isfinite(got) & np.isfinite(ref)
    assert both.mean() > 0.85
    assert np.median(np.abs(got[both] - ref[both])) < 0.01  # resampled twice (nearest, then bilinear), same scene


# ---- STAC: ItemCollection, static catalog, --stac-url ---------------------------------------------------

def stac_catalog(config, root: Path) -> Path:
    """A static STAC catalog of the city's products: one Item each, its assets local COGs (earth-search keys)."""
    import pystac

    keys = {"B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1", "B06": "rededge2", "B07": "rededge3",
            "B08": "nir", "B8A": "nir08", "B11": "swir16", "B12": "swir22", "SCL": "scl"}
    catalog = pystac.Catalog("demo", "demo city products")
    for safe in config.sentinel2:
        name = safe.name.removesuffix(".SAFE")
        folder = root / name
        folder.mkdir(parents=True)
        scl = scl_of(safe)
        cloud = float(np.isin(scl, (3, 8, 9, 10)).sum() / max((scl != 0).sum(), 1) * 100)
        with rasterio.open(next(safe.glob("GRANULE/*/IMG_DATA/R10m/*_B02_10m.jp2"))) as ref:
            bounds = rasterio.warp.transform_bounds(ref.crs, "EPSG:4326", *ref.bounds)
        geometry = {"type": "Polygon", "coordinates": [[[bounds[0], bounds[1]], [bounds[2], bounds[1]], [bounds[2], bounds[3]],
                                                        [bounds[0], bounds[3]], [bounds[0], bounds[1]]]]}
        day = name.split("_")[2]
        when = datetime.datetime.strptime(day, "%Y%m%dT%H%M%S").replace(tzinfo=datetime.timezone.utc)
        item = pystac.Item(name, geometry, list(bounds), when, {
            "eo:cloud_cover": cloud, "s2:mgrs_tile": name.split("_")[5][1:], "s2:processing_baseline": "04.00"})
        for band, key in keys.items():
            res = 10 if band in ("B02", "B03", "B04", "B08") else 20
            jp2 = next(safe.glob(f"GRANULE/*/IMG_DATA/R{res}m/*_{band}_{res}m.jp2"))
            with rasterio.open(jp2) as src:
                profile = dict(driver="COG", width=src.width, height=src.height, count=1, dtype="uint16", crs=src.crs,
                               transform=src.transform, nodata=0)
                data = src.read(1)
            with rasterio.open(folder / f"{key}.tif", "w", **profile) as dst:
                dst.write(data, 1)
            extra = {} if band == "SCL" else {"raster:bands": [{"nodata": 0, "scale": 0.0001, "offset": -0.1}]}
            item.add_asset(key, pystac.Asset(f"./{key}.tif", media_type=pystac.MediaType.COG, roles=["data"], extra_fields=extra))
        catalog.add_item(item)
    catalog.normalize_hrefs(str(root))
    for item in catalog.get_items():  # assets stay beside their item
        for key, asset in item.assets.items():
            asset.href = str(root / item.id / f"{key}.tif")
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"


def test_static_stac_catalog_search_and_item_collection(config, grid, tmp_path):
    catalog = stac_catalog(config, tmp_path / "stac")
    found = write_items(str(catalog), read_aoi(config.aoi), tmp_path / "items.json")
    items = json.loads(found.read_text())
    assert items["type"] == "FeatureCollection" and len(items["features"]) == 3
    # the ItemCollection composites like the SAFE products it was made from
    reference = whole(plan_stage(config, grid), grid)[:10]
    staged = whole(plan_stage(load_city_config(None, aoi=config.aoi, sentinel2=found), grid), grid)[:10]
    np.testing.assert_allclose(staged, reference, atol=1e-6)
    # filters: dates and cloud cover
    first_day = config.sentinel2[0].name.split("_")[2]
    day = f"{first_day[:4]}-{first_day[4:6]}-{first_day[6:8]}"
    one = write_items(str(catalog), read_aoi(config.aoi), tmp_path / "one.json", datetime=f"{day}/{day}")
    assert [f["id"] for f in json.loads(one.read_text())["features"]] == [config.sentinel2[0].name.removesuffix(".SAFE")]
    with pytest.raises(LczmapError, match="no sentinel-2-l2a items"):
        write_items(str(catalog), read_aoi(config.aoi), tmp_path / "none.json", max_cloud=0.0)

    out = tmp_path / "stack.zarr"
    result = CliRunner().invoke(cli, ["-q", "stage", "--aoi", str(config.aoi), "--stac-url", str(catalog),
                                      "--datetime", "2020-01-01/..", "--max-cloud", "90", "--composite", "best", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(Path(f"{out}.report.json").read_text())
    assert report["sources"]["sentinel2"]["composite"] == "best"
    assert len(report["sources"]["sentinel2"]["products"]) == 3 and Path(f"{out}.stac-items.json").exists()


def test_repeatable_s2_option_and_composite_on_the_command_line(config, tmp_path):
    out = tmp_path / "stack.tif"
    args = [a for p in config.sentinel2[:2] for a in ("--s2", str(p))]
    result = CliRunner().invoke(cli, ["-q", "stage", "--config", str(config.sentinel2[0].parent / "city.yaml"), *args,
                                      "--composite", "best", "--valid-count", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(Path(f"{out}.report.json").read_text())
    assert [Path(p["path"]).name for p in report["sources"]["sentinel2"]["products"]] == [p.name for p in config.sentinel2[:2]]
    with rasterio.open(out) as src:
        assert src.count == 14 and src.descriptions[-1] == VALID_COUNT
        assert set(np.unique(src.read(14))) <= {0, 1, 2}
    text = yaml.safe_load((config.sentinel2[0].parent / "city.yaml").read_text())
    assert len(text["sentinel2"]) == 3


# ---- end to end -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_predict_three_scene_city_reports_products_in_the_summary(config, tmp_path):
    from lczmap.predict import predict_city

    out = tmp_path / "lcz.tif"
    summary = predict_city(config, out, composite="best", progress=False)
    s2r = summary["sentinel2"]
    assert s2r["composite"] == "best" and len(s2r["products"]) == 3
    assert {p["name"] for p in s2r["products"]} == {p.name for p in config.sentinel2}
    assert all(p["date"] and p["tile"] for p in s2r["products"])
    shares = [p["contributed_estimate"] for p in s2r["products"]]
    assert shares[0] == max(shares) and 0.95 < sum(shares) <= 1.0
    assert json.loads(out.with_name("lcz.summary.json").read_text())["sentinel2"] == s2r
    with rasterio.open(out) as src:
        assert src.count >= 1
