"""Training labels from LCZ rasters (weak labels): the reader on two real maps, WRF codes, majority resampling, the
hygiene rules, the spatially blocked validation split, and fine-tuning with --init / --freeze-backbone.

Real maps (../shared/realdata/lcz_maps, see its PROVENANCE.md): a crop of the global LCZ map (Demuzere et al. 2022,
CC-BY 4.0; crop from the R package lczexplore) and a WUDAPT map of Zaragoza (test data of w2w, MIT).
"""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import rasterio
import rasterio.warp
import shapely
from click.testing import CliRunner
from odc.geo.geom import Geometry
from rasterio.transform import from_origin, rowcol

from lczmap.cli import cli
from lczmap.errors import LczmapError, OptionError
from lczmap.grid import city_grid
from lczmap.train.datasets import open_source, split_blocks
from lczmap.train.raster_labels import _Reader, labels_on_grid, neighbourhood_agreement, wrf_to_lcz
from lczmap.train.rules import LabelRules

MAPS = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "lcz_maps"
SYDNEY, ZARAGOZA = MAPS / "sydney_global_lcz_crop.tif", MAPS / "zaragoza_wudapt_lcz.tif"
real_maps = pytest.mark.skipif(not SYDNEY.exists(), reason="../shared/realdata is not here")
UTM = "EPSG:32633"
X0, Y0 = 500_000.0, 5_002_000.0  # top-left corner of the synthetic 2 km x 2 km city (20 x 20 cells of 100 m)


def utm_grid():
    return city_grid(Geometry(shapely.box(X0, Y0 - 2000, X0 + 2000, Y0), UTM))


def write_raster(path: Path, bands: list[np.ndarray], transform, crs=UTM, nodata=None, names=None) -> Path:
    data = np.stack(bands)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=len(bands),
                       dtype=data.dtype, crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(data)
        for i, name in enumerate(names or []):
            dst.set_band_description(i + 1, name)
    return path


def run(*args: str):
    return CliRunner().invoke(cli, ["-q", *args], catch_exceptions=False)


@real_maps
def test_global_lcz_map_crop_reads_lczfilter_by_majority_and_its_probability():
    grid = city_grid(Geometry(shapely.box(151.15, -33.90, 151.21, -33.85), "EPSG:4326"))  # central Sydney, UTM 56S
    default = labels_on_grid(SYDNEY, grid, LabelRules(min_agreement=0, max_per_class=0))
    ref = default.report["reference"]
    assert ref["description"] == "lczFilter" and ref["index"] == 2 and ref["coding"] == "lcz" and ref["crs"] == "EPSG:4326"
    assert default.report["kept"] == default.report["cells_in_aoi"] == int(grid.aoi_mask.sum()) > 2500
    with rasterio.open(SYDNEY) as src:
        source_classes = set(np.unique(src.read(2))) - {0}
        # Each cell's class is the majority of the ~1.2 map cells under it: mostly the map cell under its centre.
        rows, cols = np.nonzero(default.codes)
        xs, ys = grid.output.affine * (cols + 0.5, rows + 0.5)
        lon, lat = rasterio.warp.transform(grid.crs.to_wkt(), src.crs, xs, ys)
        under = src.read(2)[tuple(np.array(rowcol(src.transform, lon, lat)))]
    assert set(np.unique(default.codes[default.codes > 0])) <= source_classes
    assert (default.codes[rows, cols] == under).mean() > 0.85
    raw = labels_on_grid(SYDNEY, grid, LabelRules(band="lcz", min_agreement=0, max_per_class=0))
    assert raw.report["reference"]["description"] == "lcz" and (raw.codes != default.codes).any()
    confident = labels_on_grid(SYDNEY, grid, LabelRules(min_probability=80, max_per_class=0))
    r = confident.report
    assert r["rules"]["min_agreement"] == 0  # the probability replaces the neighbourhood rule
    assert r["reference"]["probability_band"] == 3 and r["dropped_low_probability"] > 100
    assert r["kept"] == r["cells_in_aoi"] - r["dropped_low_probability"]


@real_maps
def test_wudapt_map_int32_with_nodata_read_by_window_around_the_city():
    # Half of this area lies west of the map's edge (lon -1.7002): those cells get no label.
    grid = city_grid(Geometry(shapely.box(-1.75, 41.60, -1.65, 41.65), "EPSG:4326"))
    labels = labels_on_grid(ZARAGOZA, grid, LabelRules(min_agreement=0, max_per_class=0))
    ref = labels.report["reference"]
    assert ref["dtype"] == "int32" and ref["nodata"] == -999 and ref["values_without_class"] == []
    assert set(np.unique(labels.codes[labels.codes > 0])) <= {2, 3, 5, 6, 8, 9, 11, 12, 13, 14, 15, 16, 17}
    cols = np.nonzero(labels.codes)[1]
    x, y = grid.output.affine * (cols.min() + 0.5, 0.5)
    westmost = rasterio.warp.transform(grid.crs.to_wkt(), "EPSG:4326", [x], [y])[0][0]
    assert westmost > -1.702 and 0.3 < labels.report["kept"] / labels.report["cells_in_aoi"] < 0.7
    reader = _Reader(ZARAGOZA, LabelRules())
    try:  # only the window under the city is read
        window = reader.footprint(tuple(grid.output.boundingbox), grid.crs.to_wkt())
        assert window.width * window.height < 0.01 * reader.ds.width * reader.ds.height
    finally:
        reader.close()


def test_wrf_codes_as_w2w_writes_them():
    values = np.arange(0, 70)
    want = np.zeros(70, np.uint8)
    want[31:41], want[41], want[51:61], want[61] = range(1, 11), 15, range(1, 11), 15
    np.testing.assert_array_equal(wrf_to_lcz(values), want)


def test_wrf_coded_raster_is_detected_and_its_natural_categories_left_out(tmp_path):
    lu = np.full((20, 20), 12, np.int16)  # MODIS cropland: WRF's own category, not LCZ 12
    lu[:5], lu[5:10], lu[10:15, :10] = 32, 56, 17  # LCZ 2 (WRF 4.3), LCZ 6 (WRF 4.4.2+), MODIS water
    lu[15:, :10] = 41  # LCZ E counted as urban
    path = write_raster(tmp_path / "lu_index.tif", [lu], from_origin(X0, Y0, 100, 100))
    auto = labels_on_grid(path, utm_grid(), LabelRules(min_agreement=0))
    assert auto.report["reference"]["coding"] == "wrf" and auto.report["reference"]["values_without_class"] == [12, 17]
    np.testing.assert_array_equal(auto.codes, np.select([lu == 32, lu == 56, lu == 41], [2, 6, 15], 0))
    as_lcz = labels_on_grid(path, utm_grid(), LabelRules(codes="lcz", min_agreement=0))
    np.testing.assert_array_equal(as_lcz.codes, np.select([lu == 12, lu == 17], [12, 17], 0))
    with pytest.raises(OptionError, match="--reference-codes wrf2: must be one of auto, lcz, wrf"):
        LabelRules(codes="wrf2")


def test_classes_are_resampled_by_majority_never_interpolated(tmp_path):
    # 10 m map: in every 100 m cell 60 pixels of one class and 40 of the other, which class leads alternating
    # like a chessboard. Bilinear or average resampling of codes 2 and 8 would give 4-6; majority gives 2 or 8.
    fine = np.empty((200, 200), np.uint8)
    lead = (np.add.outer(np.arange(20), np.arange(20)) % 2).astype(bool)
    for r in range(20):
        for c in range(20):
            a, b = (2, 8) if lead[r, c] else (8, 2)
            fine[r * 10 : r * 10 + 10, c * 10 : c * 10 + 10] = a
            fine[r * 10 : r * 10 + 4, c * 10 : c * 10 + 10] = b
    path = write_raster(tmp_path / "fine.tif", [fine], from_origin(X0, Y0, 10, 10))
    labels = labels_on_grid(path, utm_grid(), LabelRules(min_agreement=0))
    np.testing.assert_array_equal(labels.codes, np.where(lead, 2, 8))
    # A coarser map in another CRS (~220 m cells in degrees): each cell takes the map cell under its centre.
    lon0, lat0 = rasterio.warp.transform(UTM, "EPSG:4326", [X0 - 500], [Y0 + 500])
    coarse = np.random.default_rng(0).choice(np.array([3, 9, 14], np.uint8), (16, 26))
    path = write_raster(tmp_path / "coarse.tif", [coarse], from_origin(lon0[0], lat0[0], 0.0028, 0.002), crs="EPSG:4326")
    grid = utm_grid()
    labels = labels_on_grid(path, grid, LabelRules(min_agreement=0))
    rows, cols = np.indices(grid.output.shape)
    lon, lat = rasterio.warp.transform(UTM, "EPSG:4326", *(grid.output.affine * (cols.ravel() + 0.5, rows.ravel() + 0.5)))
    with rasterio.open(path) as src:
        under = coarse[tuple(np.array(rowcol(src.transform, lon, lat)))].reshape(grid.output.shape)
    np.testing.assert_array_equal(labels.codes, under)


def hygiene_map(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """The 20 x 20 cells of the city and a ring of one cell around them: LCZ 14 west, LCZ 6 east, four lone LCZ 2
    cells in the city; classProbability 90, 40 on two of the city's rows. Returns the city's part of the codes."""
    codes = np.full((22, 22), 14, np.int16)
    codes[:, 11:] = 6
    for r, c in [(3, 3), (8, 15), (15, 5), (17, 16)]:
        codes[r + 1, c + 1] = 2
    prob = np.full((22, 22), 90, np.int16)
    prob[[7, 13]] = 40
    return write_raster(tmp_path / "lcz.tif", [codes, codes, prob], from_origin(X0 - 100, Y0 + 100, 100, 100),
                        names=["lcz", "lczFilter", "classProbability"]), codes[1:-1, 1:-1]


def test_hygiene_rules_each_switchable(tmp_path):
    path, codes = hygiene_map(tmp_path)
    grid = utm_grid()
    everything = labels_on_grid(path, grid, LabelRules(min_agreement=0, max_per_class=0))
    np.testing.assert_array_equal(everything.codes, codes)

    agreeing = labels_on_grid(path, grid, LabelRules())  # default: 5 of 9 cells agree
    assert agreeing.report["rules"]["min_agreement"] == 5
    assert not (agreeing.codes == 2).any() and agreeing.report["dropped_disagreeing"] == 4
    assert ((agreeing.codes > 0) == (codes != 2)).all()  # the east-west boundary agrees 6 of 9: kept
    assert neighbourhood_agreement(codes)[3, 3] == 1 and neighbourhood_agreement(codes)[5, 9] == 6

    confident = labels_on_grid(path, grid, LabelRules(min_probability=50, max_per_class=0))
    assert (confident.codes[[6, 12]] == 0).all() and (confident.codes == 2).sum() == 4  # agreement off with a probability
    assert confident.report["dropped_low_probability"] == 40 and confident.report["kept"] == 360
    with rasterio.open(path) as src:  # the same probabilities as fractions 0-1 in a float band
        bands = [src.read(1).astype(np.float32), src.read(2).astype(np.float32), src.read(3).astype(np.float32) / 100]
        fractions = write_raster(tmp_path / "fractions.tif", bands, src.transform, names=list(src.descriptions))
    assert labels_on_grid(fractions, grid, LabelRules(min_probability=50, max_per_class=0)).report["dropped_low_probability"] == 40

    capped = labels_on_grid(path, grid, LabelRules(min_agreement=0, max_per_class=50, seed=1))
    assert capped.report["class_counts"] == {"2": 4, "6": 50, "14": 50} and capped.report["dropped_by_cap"] == 400 - 104
    again = labels_on_grid(path, grid, LabelRules(min_agreement=0, max_per_class=50, seed=1))
    other = labels_on_grid(path, grid, LabelRules(min_agreement=0, max_per_class=50, seed=2))
    np.testing.assert_array_equal(capped.codes, again.codes)
    assert (capped.codes != other.codes).any()

    with pytest.raises(LczmapError, match="has no band named like 'probability'"):
        labels_on_grid(write_raster(tmp_path / "one.tif", [codes], from_origin(X0, Y0, 100, 100)), grid, LabelRules(min_probability=50))
    edge = labels_on_grid(tmp_path / "one.tif", grid)  # beyond the map's edge no neighbour agrees: corners need 5 of 4
    assert edge.codes[0, 0] == 0 and edge.codes[0, 1] > 0
    with pytest.raises(LczmapError, match="does not reach the city"):
        labels_on_grid(write_raster(tmp_path / "far.tif", [codes], from_origin(X0 + 1e5, Y0, 100, 100)), grid)


def test_soft_labels_are_neighbourhood_shares_and_correct_lone_cells(tmp_path):
    path, codes = hygiene_map(tmp_path)
    soft = labels_on_grid(path, utm_grid(), LabelRules(min_agreement=0, max_per_class=0, soft=True))
    t = soft.targets
    assert t.shape == (*codes.shape, 17) and np.allclose(t.sum(axis=-1), 1.0)
    # A lone LCZ 2 cell in LCZ 14: 8 of its 9 cells are 14, so it teaches mostly 14, and takes class 14.
    assert t[3, 3, 13] == pytest.approx(8 / 9) and t[3, 3, 1] == pytest.approx(1 / 9) and soft.codes[3, 3] == 14
    assert soft.report["relabelled_by_neighbourhood"] == 4 and soft.report["rules"]["soft"] is True
    # The east-west boundary: 6 of 9 one class, 3 of 9 the other; inside a class, one-hot.
    assert t[5, 10, 5] == pytest.approx(6 / 9) and t[5, 10, 13] == pytest.approx(3 / 9) and soft.codes[5, 10] == 6
    assert t[0, 0, 13] == 1.0 and soft.codes[0, 0] == 14
    assert not (soft.codes == 2).any() and (soft.codes > 0).all()
    hard = labels_on_grid(path, utm_grid(), LabelRules(min_agreement=0, max_per_class=0))
    assert hard.targets is None and hard.report["relabelled_by_neighbourhood"] == 0


def test_soft_label_rows_are_read_as_targets_and_bad_rows_refused(tmp_path):
    def write(name: str, rows: np.ndarray) -> Path:
        with h5py.File(tmp_path / name, "w") as f:
            f["sen2"] = np.zeros((len(rows), 8, 8, 1), np.float32)
            f["sen2"].attrs["bands"] = ["b"]
            f["label"] = rows
        return tmp_path / name

    rows = np.array([[0.75, 0.25] + [0] * 15, [0, 1] + [0] * 15, [0.2, 0.3, 0.5] + [0] * 14], np.float32)
    source = open_source(write("soft.h5", rows))
    assert source.labels.tolist() == [1, 2, 3]
    np.testing.assert_array_equal(source.target_rows(np.array([2, 0])), rows[[2, 0]])
    rows[1, :2] = [1.5, -0.5]
    with pytest.raises(LczmapError, match="'label' row 1 is neither one-hot nor class shares summing to 1"):
        open_source(write("negative.h5", rows))


def test_blocked_split_keeps_whole_blocks_of_at_least_2_km(tmp_path):
    cells = np.argwhere(np.ones((64, 64), bool))  # a 6.4 km city, one patch per 100 m cell
    path = tmp_path / "cells.h5"
    with h5py.File(path, "w") as f:
        f["sen2"] = np.zeros((len(cells), 8, 8, 1), np.float32)
        f["sen2"].attrs["bands"] = ["b"]
        f["label"] = np.eye(17, dtype=np.float32)[np.zeros(len(cells), int)]
        f["cell"] = cells
        f.attrs["cell_size_m"] = 100.0
    source = open_source(path)
    blocks = source.blocks(2000)
    assert len(np.unique(blocks)) == 16  # 20 x 20-cell blocks: 4 x 4, the last row and column partly filled
    for b in np.unique(blocks):
        extent = np.ptp(cells[blocks == b], axis=0) + 1
        assert (extent <= 20).all() and (extent >= 4).all()
    train, val = split_blocks(blocks, 0.2, seed=3)
    assert not set(blocks[train]) & set(blocks[val]) and len(train) + len(val) == len(cells)
    assert 0.2 <= len(val) / len(cells) < 0.2 + 400 / len(cells)
    assert len(split_blocks(np.zeros(10, int), 0.5, seed=0)[1]) == 0  # one block: it stays for training


@pytest.fixture(scope="module")
def weak_model(demo_city, tmp_path_factory):
    """msmla18 trained for one epoch on the demo city's truth raster named as `reference:` in a city.yaml (few cells)."""
    tmp = tmp_path_factory.mktemp("weak")
    config = demo_city / "city_raster.yaml"
    text = (demo_city / "city.yaml").read_text().replace("reference: reference.geojson", "reference: truth_lcz.tif")
    config.write_text(text)
    out = tmp / "weak"
    result = run("train", "--city", str(config), "--max-per-class", "6", "--epochs", "1", "--batch-size", "16", "--eager",
                 "--out", str(out))
    return {"config": config, "out": out, "result": result, "tmp": tmp}


def test_train_from_an_lcz_raster_records_hygiene_split_and_lineage(weak_model):
    assert weak_model["result"].exit_code == 0, weak_model["result"].output
    card = json.loads((weak_model["out"] / "card.json").read_text())
    t = card["training"]
    labels = t["labels"][0]
    assert labels["reference_kind"] == "raster" and labels["reference"]["path"].endswith("truth_lcz.tif")
    assert labels["rules"] == {"band": None, "codes": "auto", "min_probability": None, "min_agreement": 5, "max_per_class": 6,
                              "soft": False, "seed": 0}
    assert max(labels["class_counts"].values()) == 6 and labels["dropped_by_cap"] > 0
    assert t["split"].startswith("spatial blocks of 2 km") and t["validation_blocks"]["block_km"] == 2.0
    assert card["lineage"]["parent"] is None and card["lineage"]["trained"]
    assert card["lineage"]["label_sources"][0]["coding"] == "lcz"
    assert card["trained_on"]["label_source"].endswith("LCZ map truth_lcz.tif (band lcz, lcz codes)")
    assert card["trained_on"]["regions"] == [labels["city"]] and card["product_level"] == "L2A"
    # The split the card reports: no block on both sides.
    source = open_source(weak_model["out"] / "samples" / "city-city_raster.h5")
    blocks = source.blocks(2000)
    train, val = split_blocks(blocks, 0.1, seed=0)
    assert len(train) == t["n_train"] and len(val) == t["n_validation"] and not set(blocks[train]) & set(blocks[val])


def test_train_on_soft_labels_writes_class_shares_and_records_the_rule(weak_model):
    out = weak_model["tmp"] / "soft"
    result = run("train", "--city", str(weak_model["config"]), "--soft-labels", "--min-agreement", "0", "--max-per-class", "6",
                 "--epochs", "1", "--batch-size", "16", "--eager", "--out", str(out))
    assert result.exit_code == 0, result.output
    labels = json.loads((out / "card.json").read_text())["training"]["labels"][0]
    assert labels["rules"]["soft"] is True and labels["rules"]["min_agreement"] == 0
    source = open_source(out / "samples" / "city-city_raster.h5")
    assert source.targets is not None and (source.targets.max(axis=1) < 1).any()  # boundary cells: shares
    np.testing.assert_array_equal(source.targets.argmax(axis=1) + 1, source.labels)


def test_fine_tuning_keeps_the_frozen_backbone_and_records_its_parent(weak_model):
    from lczmap.card import load_card, load_model

    parent_dir, out = weak_model["out"], weak_model["tmp"] / "tuned"
    samples = parent_dir / "samples" / "city-city_raster.h5"  # the parent's patches: no staging again
    result = run("train", "--data", str(samples), "--init", str(parent_dir), "--freeze-backbone", "--epochs", "1",
                 "--batch-size", "16", "--eager", "--out", str(out))
    assert result.exit_code == 0, result.output
    parent, child = load_card(parent_dir), load_card(out)
    assert child.training["fine_tuning"]["trainable_layers"] == ["fc17"] and child.mean == parent.mean
    assert child.lineage["parent"]["weights_sha256"] == parent.weights_sha256
    assert "--init" in child.command and "--freeze-backbone" in child.command
    before, after = load_model(parent), load_model(child)
    for a, b in zip(before.layers, after.layers, strict=True):
        same = all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights(), strict=True))
        assert same == (a.name != "fc17"), a.name  # batch-norm statistics included: frozen layers run in inference mode


@pytest.mark.parametrize("args, message", [
    (["--network", "sen2lcz"], "does not fit this run: network msmla18 (this run: sen2lcz)"),
    (["--patch", "32"], "input shape 48,48,13 (this run: 32,32,13)"),
    (["--bands", "B02,B03"], "bands B02,B03,B04"),
    (["--init", "no-such-model"], "--init no-such-model: no such model folder or name"),
])
def test_init_that_does_not_fit_is_one_line_and_writes_nothing(weak_model, args, message):
    out = weak_model["tmp"] / "refused"
    init = [] if "--init" in args else ["--init", str(weak_model["out"])]
    result = run("train", "--city", str(weak_model["config"]), *init, *args, "--epochs", "1", "--out", str(out))
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: --init ") and message in lines[0], result.output
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--freeze-backbone"], "--freeze-backbone goes with --init MODEL"),
    (["--val-block-km", "1"], "--val-block-km 1: validation blocks must be at least 2 km"),
    (["--min-probability", "50"], "has no band named like 'probability'"),
    (["--reference-band", "lczFilter"], "--reference-band lczFilter: no band of"),
    (["--reference", "{geojson}", "--max-per-class", "5"], "is not a raster; --reference-band"),
    (["--reference", "{geojson}", "--soft-labels"], "--soft-labels go with an LCZ raster --reference"),
])
def test_bad_weak_label_options_are_one_line(demo_city, weak_model, args, message):
    out = weak_model["tmp"] / "refused"
    args = [a.format(geojson=demo_city / "reference.geojson") for a in args]
    result = run("train", "--city", str(weak_model["config"]), *args, "--epochs", "1", "--out", str(out))
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and message in lines[0], result.output
    assert not out.exists()
