"""`lczmap evaluate`: a hand-made map against hand-made polygons/rasters with known accuracy, and a model on patches."""

import json
from pathlib import Path

import geopandas as gpd
import h5py
import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.transform import from_origin
from shapely.geometry import box

from lczmap.cli import cli
from lczmap.evaluate import evaluate_map, stratified_test_draws

X0, Y0, RES, CRS = 500_000.0, 5_000_000.0, 100.0, "EPSG:32633"


def write_map(path: Path, bands: list[np.ndarray], descriptions=None, crs=CRS, res=RES) -> Path:
    h, w = bands[0].shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=len(bands), dtype="uint8", crs=crs,
                       transform=from_origin(X0, Y0, res, res), nodata=0) as dst:
        for i, band in enumerate(bands, 1):
            dst.write(band.astype(np.uint8), i)
            if descriptions:
                dst.set_band_description(i, descriptions[i - 1])
    return path


def cells(row0: int, col0: int, n: int = 4):
    """A square polygon holding the centres of n x n map pixels (edges 25 m inside the pixel edges)."""
    return box(X0 + col0 * RES + 25, Y0 - (row0 + n) * RES + 25, X0 + (col0 + n) * RES - 25, Y0 - row0 * RES - 25)


@pytest.fixture()
def scene(tmp_path):
    """A 20 x 20 map: quadrants of classes 2, 6, 11 and 104 (GeoClimate's D = 14)."""
    lcz = np.zeros((20, 20), np.uint8)
    lcz[:10, :10], lcz[:10, 10:], lcz[10:, :10], lcz[10:, 10:] = 2, 6, 11, 104
    noise = np.full((20, 20), 17, np.uint8)  # a raw band that must not be picked by default
    map_path = write_map(tmp_path / "lcz.tif", [noise, lcz], ["lcz", "lczFilter"])
    # Four polygons of 16 pixels; the one in the class-6 quadrant claims class 8: 3 of 4 right by area.
    polys = gpd.GeoDataFrame({"lcz": [2, 8, 11, "D"]}, geometry=[cells(2, 2), cells(2, 12), cells(12, 2), cells(12, 12)], crs=CRS)
    ref = tmp_path / "ref.geojson"
    polys.to_crs("EPSG:4326").to_file(ref)  # any CRS: reprojected to the map's
    return map_path, ref


def test_three_of_four_polygons_right_by_area(scene, tmp_path):
    map_path, ref = scene
    report = evaluate_map(map_path, ref, draws=10, seed=1)
    assert report["band"]["index"] == 2  # the lczFilter band
    assert report["n_polygons"] == 4 and report["n_pixels"] == 64
    s = report["all_samples"]
    assert s["oa"] == pytest.approx(0.75)
    assert s["oa_u"] == pytest.approx(16 / 32)  # built block: class 2 right, class 8 mapped as 6
    assert s["oa_bu"] == pytest.approx(1.0)
    cm = np.array(s["confusion_matrix"])
    assert cm[7, 5] == 16 and cm[13, 13] == 16 and cm.sum() == 64
    b = report["bootstrap"]
    # one polygon per class: every draw tests all four, so the interval collapses on the exact value
    assert b["unit"] == "polygon" and b["draws"] == 10
    assert b["metrics"]["oa"] == pytest.approx({"mean": 0.75, "low": 0.75, "high": 0.75})
    out = map_path.with_name("lcz.evaluation.json")
    assert json.loads(out.read_text())["all_samples"]["oa"] == pytest.approx(0.75)
    assert out.with_suffix(".png").stat().st_size > 0


def test_band_choice_changes_the_score(scene):
    map_path, ref = scene
    report = evaluate_map(map_path, ref, band="1", draws=2, out=map_path.parent / "raw.json")
    assert report["all_samples"]["oa"] == 0  # band 1 says 17 everywhere
    assert evaluate_map(map_path, ref, band="lczFilter", draws=2, out=map_path.parent / "f.json")["band"]["index"] == 2


def test_bootstrap_draws_thirty_percent_of_polygons_per_class():
    labels = np.array([2] * 10 + [6] * 3 + [11])
    draws = stratified_test_draws(labels, 25, 0.3, seed=4)
    for test in draws:
        assert list(np.bincount(labels[test], minlength=12)[[2, 6, 11]]) == [3, 1, 1]
    assert len({tuple(t) for t in draws}) > 1  # draws differ


def test_bootstrap_interval_spans_polygon_variation(tmp_path):
    """Ten class-2 polygons, of which the map gets four wrong: draws of three give OA between 0 and 1."""
    lcz = np.full((4, 40), 2, np.uint8)
    lcz[:, :16] = 3  # polygons 0-3 (4 columns each) are mapped as class 3
    map_path = write_map(tmp_path / "m.tif", [lcz])
    polys = gpd.GeoDataFrame({"lcz": [2] * 10}, geometry=[cells(0, 4 * k) for k in range(10)], crs=CRS)
    polys.to_file(tmp_path / "p.gpkg")
    report = evaluate_map(map_path, tmp_path / "p.gpkg", draws=25, seed=0)
    assert report["all_samples"]["oa"] == pytest.approx(0.6)
    b = report["bootstrap"]["metrics"]["oa"]
    assert b["low"] < 0.6 < b["high"] and 0 <= b["low"] and b["high"] <= 1
    assert 0.4 < b["mean"] < 0.8


def test_reference_raster_is_compared_pixel_by_pixel(scene, tmp_path):
    map_path, _ = scene
    with rasterio.open(map_path) as ds:
        truth = ds.read(2)
    truth = np.where(truth == 104, 14, truth)
    truth[0, :10] = 1  # 10 pixels disagree
    truth[19, :] = 0  # 20 pixels without reference
    ref = write_map(tmp_path / "truth.tif", [truth])
    report = evaluate_map(map_path, ref, draws=5)
    assert report["reference_kind"] == "raster" and report["n_pixels"] == 380
    assert report["all_samples"]["oa"] == pytest.approx(370 / 380)
    assert report["bootstrap"]["unit"] == "pixel"


def test_cli_map_evaluation_and_bad_input(scene, tmp_path):
    map_path, ref = scene
    runner = CliRunner()
    ok = runner.invoke(cli, ["evaluate", "--map", str(map_path), "--reference", str(ref), "--bootstrap", "3",
                             "--out", str(tmp_path / "r" / "eval.json")])
    assert ok.exit_code == 0, ok.output
    assert "OA 0.750" in ok.output and (tmp_path / "r" / "eval.json").exists() and (tmp_path / "r" / "eval.png").exists()
    (tmp_path / "notes.txt").write_text("hello")
    far = tmp_path / "far.geojson"
    gpd.GeoDataFrame({"lcz": [2]}, geometry=[box(10, 10, 10.01, 10.01)], crs="EPSG:4326").to_file(far)
    cases = [
        (["--map", str(tmp_path / "none.tif"), "--reference", str(ref)], "none.tif: file does not exist"),
        (["--map", str(tmp_path / "notes.txt"), "--reference", str(ref)], "not a readable raster"),
        (["--map", str(map_path), "--reference", str(tmp_path / "gone.geojson")], "gone.geojson: reference file does not exist"),
        (["--map", str(map_path), "--reference", str(ref), "--reference-column", "klass"], "--reference-column klass: not a column"),
        (["--map", str(map_path), "--reference", str(ref), "--band", "lcz_raw"], "--band lcz_raw: no band"),
        (["--map", str(map_path), "--reference", str(far)], "no reference polygon covers a mapped pixel"),
        (["--map", str(map_path)], "--map needs --reference"),
        (["--model", "no-such-model", "--data", str(ref)], "--model no-such-model: no such model"),
        ([], "nothing to evaluate"),
    ]
    for args, message in cases:
        result = runner.invoke(cli, ["evaluate", *args])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1 and message in lines[0], (args, result.output)


def test_bad_polygon_class_is_named(tmp_path, scene):
    map_path, _ = scene
    bad = tmp_path / "bad.geojson"
    gpd.GeoDataFrame({"lcz": ["Z"]}, geometry=[cells(2, 2)], crs=CRS).to_file(bad)
    result = CliRunner().invoke(cli, ["evaluate", "--map", str(map_path), "--reference", str(bad)])
    assert result.exit_code == 1 and "value 'Z' is not an LCZ class" in result.output


def test_model_scored_on_patch_dataset(tmp_path):
    """A model folder (random weights) scored on MSMLA-format patches: the report matches our own predictions."""
    import keras

    from lczmap.card import ModelCard, load_card, load_model, write_card
    from lczmap.nets import build
    from lczmap.train.datasets import S2_BANDS

    keras.utils.set_random_seed(0)
    folder = tmp_path / "tiny"
    folder.mkdir()
    build("msmla18", (16, 16, 10)).save_weights(str(folder / "model.weights.h5"))
    card = ModelCard(name="tiny", network="msmla18", input_shape=(16, 16, 10), bands=S2_BANDS,
                     mean=tuple(np.linspace(0.1, 0.2, 10)), std=(0.05,) * 10)
    write_card(card, folder)
    rng = np.random.default_rng(0)
    x = rng.normal(0.15, 0.05, (24, 16, 16, 13)).astype(np.float32)
    codes = rng.integers(1, 18, 24)
    data = tmp_path / "test.h5"
    with h5py.File(data, "w") as f:
        f["sen2"] = x
        f["label"] = np.eye(17)[codes - 1]
        f["sen2"].attrs["bands"] = list(S2_BANDS) + ["osm_buildings", "dsm", "landcover"]
    result = CliRunner().invoke(cli, ["evaluate", "--model", str(folder), "--data", str(data), "--out", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "e.json").read_text())
    loaded = load_card(folder)
    probs = keras.ops.convert_to_numpy(load_model(loaded)(loaded.normalise(x[..., :10]), training=False))
    expected = float((probs.argmax(axis=1) + 1 == codes).mean())
    assert report["n"] == 24 and report["oa"] == pytest.approx(expected)
    assert report["network"] == "msmla18" and (tmp_path / "e.png").exists()


# --- map against map, on real maps ---------------------------------------------------------------------------------
# ../shared/realdata/lcz_maps (see its PROVENANCE.md): a WUDAPT map of Zaragoza (w2w test data, MIT; int32, nodata
# -999, EPSG:4326) and a crop of the global LCZ map over Sydney (Demuzere et al. 2022, CC-BY 4.0, via lczexplore;
# int16, three bands lcz/lczFilter/classProbability, EPSG:4326).
REAL_MAPS = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "lcz_maps"
needs_real_maps = pytest.mark.skipif(not REAL_MAPS.is_dir(), reason="../shared/realdata not present")


def crop(src: Path, dst: Path, col: int, row: int, width: int, height: int) -> Path:
    from rasterio.windows import Window

    with rasterio.open(src) as ds:
        window = Window(col, row, width, height)
        profile = {**ds.profile, "width": width, "height": height, "transform": ds.window_transform(window)}
        data = ds.read(window=window)
        descriptions = ds.descriptions
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
        for i, d in enumerate(descriptions, 1):
            if d:
                out.set_band_description(i, d)
    return dst


def recoded_copy(src: Path, dst: Path, *, crs: str, factor: float, dtype: str, nodata, shift_cells: float = 0.0) -> Path:
    """`src`'s classes with A-G as WRF's 101-107, in another dtype/nodata, reprojected (nearest) to `crs` at
    `factor` times its cell size, optionally shifted east by `shift_cells` of its own cells."""
    from rasterio.transform import array_bounds
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    from lczmap.evaluate import read_lcz_band

    codes, transform, src_crs, _ = read_lcz_band(src)
    wrf = np.where(codes >= 11, codes.astype(np.int32) + 90, codes.astype(np.int32))
    dst_t, w, h = calculate_default_transform(src_crs, crs, codes.shape[1], codes.shape[0], *array_bounds(*codes.shape, transform))
    dst_t = dst_t * rasterio.Affine.scale(factor)
    w, h = int(np.ceil(w / factor)), int(np.ceil(h / factor))
    out = np.zeros((h, w), np.int32)
    reproject(wrf, out, src_transform=transform, src_crs=src_crs, src_nodata=0, dst_transform=dst_t, dst_crs=crs,
              dst_nodata=0, resampling=Resampling.nearest)
    data = np.where(out == 0, nodata, out).astype(dtype)
    with rasterio.open(dst, "w", driver="GTiff", width=w, height=h, count=1, dtype=dtype, crs=crs, nodata=nodata,
                       transform=dst_t * rasterio.Affine.translation(shift_cells / factor, 0)) as ds:
        ds.write(data, 1)
    return dst


def test_a_map_against_its_own_recoded_copy_scores_one_and_a_shifted_copy_less(scene, tmp_path):
    """Our UTM map against a copy in EPSG:4326, WRF coding, int32 with -999 nodata, finer cells: OA 1; shifted: lower."""
    map_path, _ = scene
    copy = recoded_copy(map_path, tmp_path / "copy.tif", crs="EPSG:4326", factor=0.25, dtype="int32", nodata=-999)
    with rasterio.open(copy) as ds:
        values = set(np.unique(ds.read(1)).tolist())
        assert ds.crs.to_epsg() == 4326 and {2, 6, 101, 104} <= values <= {-999, 2, 6, 101, 104}
    report = evaluate_map(map_path, copy, draws=3, out=tmp_path / "copy.json")
    assert report["reference_resampling"].startswith("majority") and report["all_samples"]["oa"] == 1.0
    assert report["n_pixels"] == 400 and report["n_map_only"] == 0
    shifted = recoded_copy(map_path, tmp_path / "shifted.tif", crs="EPSG:4326", factor=0.25, dtype="int32", nodata=-999,
                           shift_cells=3)
    assert evaluate_map(map_path, shifted, draws=3, out=tmp_path / "shifted.json")["all_samples"]["oa"] < 0.9


@needs_real_maps
def test_real_zaragoza_map_against_recoded_projected_and_shifted_copies(tmp_path):
    zaragoza = crop(REAL_MAPS / "zaragoza_wudapt_lcz.tif", tmp_path / "zaragoza.tif", 450, 250, 200, 150)
    finer = recoded_copy(zaragoza, tmp_path / "utm_fine.tif", crs="EPSG:32630", factor=0.25, dtype="float32", nodata=np.nan)
    report = evaluate_map(zaragoza, finer, draws=3, out=tmp_path / "fine.json")
    assert report["band"]["nodata"] == -999 and report["reference_resampling"].startswith("majority")
    assert report["all_samples"]["oa"] == 1.0 and report["n_pixels"] == 200 * 150
    coarser = recoded_copy(zaragoza, tmp_path / "utm_coarse.tif", crs="EPSG:32630", factor=2, dtype="int16", nodata=-1)
    report = evaluate_map(zaragoza, coarser, draws=3, out=tmp_path / "coarse.json")
    assert report["reference_resampling"] == "nearest" and 0.3 < report["all_samples"]["oa"] < 1.0
    shifted = recoded_copy(zaragoza, tmp_path / "shifted.tif", crs="EPSG:32630", factor=0.25, dtype="int16", nodata=-1,
                           shift_cells=4)
    assert evaluate_map(zaragoza, shifted, draws=3, out=tmp_path / "shifted.json")["all_samples"]["oa"] < 0.9


@needs_real_maps
def test_real_three_band_global_map_picks_lczfilter_and_writes_the_agreement_map(tmp_path):
    sydney = crop(REAL_MAPS / "sydney_global_lcz_crop.tif", tmp_path / "sydney.tif", 500, 300, 200, 150)
    with rasterio.open(sydney) as ds:
        raw, filtered = ds.read(1), ds.read(2)
        profile = {**ds.profile, "count": 1}
    with rasterio.open(tmp_path / "raw.tif", "w", **profile) as out:  # a single band: the unfiltered `lcz` band
        out.write(raw, 1)
    report = evaluate_map(sydney, sydney, draws=3, out=tmp_path / "self.json")
    assert report["band"]["description"] == "lczFilter" and report["reference_band"]["description"] == "lczFilter"
    assert report["all_samples"]["oa"] == 1.0
    report = evaluate_map(sydney, tmp_path / "raw.tif", draws=3, out=tmp_path / "raw.json")
    both = (raw > 0) & (filtered > 0)
    assert report["all_samples"]["oa"] == pytest.approx((raw[both] == filtered[both]).mean()) and report["all_samples"]["oa"] < 1
    with rasterio.open(tmp_path / "raw.agreement.tif") as ds:
        agreement = ds.read(1)
        assert ds.crs == profile["crs"] and ds.transform == profile["transform"] and ds.descriptions == ("agreement",)
        assert ds.colormap(1)[1][:3] == (26, 152, 80) and ds.tags()["code_2"] == "different class"
    assert (agreement == 1).sum() == (raw[both] == filtered[both]).sum() and (agreement == 2).sum() == (raw[both] != filtered[both]).sum()
    assert report["agreement_map"] == "raw.agreement.tif"


@needs_real_maps
def test_a_coarser_utm_map_against_the_finer_global_map_takes_the_majority(tmp_path):
    """A 300 m UTM map made from Sydney's lczFilter by majority of cell centres scores OA 1 against the 90 m original."""
    from rasterio.transform import from_origin

    from lczmap.evaluate import majority_on_grid, read_lcz_band

    sydney = crop(REAL_MAPS / "sydney_global_lcz_crop.tif", tmp_path / "sydney.tif", 500, 300, 200, 150)
    codes, transform, crs, _ = read_lcz_band(sydney)
    grid = from_origin(315_000, 6_255_000, 300, 300)  # EPSG:32756 over the crop
    coarse = majority_on_grid(codes, transform, crs, (40, 40), grid, "EPSG:32756")
    assert (coarse > 0).mean() > 0.5
    coarse_path = write_map(tmp_path / "coarse.tif", [coarse], crs="EPSG:32756", res=300)
    with rasterio.open(coarse_path, "r+") as ds:
        ds.transform = grid
    report = evaluate_map(coarse_path, sydney, draws=3, out=tmp_path / "coarse.json")
    assert report["reference_resampling"].startswith("majority") and report["all_samples"]["oa"] == 1.0


def test_values_that_are_not_classes_are_listed(tmp_path):
    lcz = np.full((10, 10), 6, np.int16)
    lcz[0] = -1  # the nodata
    lcz[1, :3] = 99  # not a class, not nodata: no class, but said so
    path = tmp_path / "odd.tif"
    with rasterio.open(path, "w", driver="GTiff", width=10, height=10, count=1, dtype="int16", crs=CRS,
                       transform=from_origin(X0, Y0, RES, RES), nodata=-1) as dst:
        dst.write(lcz, 1)
    from lczmap.evaluate import read_lcz_band

    codes, _, _, info = read_lcz_band(path)
    assert (codes == 0).sum() == 13 and info["values_without_class"] == [99] and info["nodata"] == -1
