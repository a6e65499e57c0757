"""`lczmap predict` end to end on the 3 km demo city: the COG and its metadata, patches, workers, CRS, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from click.testing import CliRunner
from rio_cogeo.cogeo import cog_validate

from lczmap.card import ModelCard, load_card, write_card
from lczmap.classes import lcz_classes
from lczmap.cli import cli
from lczmap.config import PATH_KEYS, load_city_config
from lczmap.cli.predict import DEMO_SEED
from lczmap.outputs import output_paths, write_outputs
from lczmap.predict import block_tasks, compute_probabilities, plan_city, predict_city
from lczmap.stage import BANDS, stage_city
from lczmap.tiling import BlockPatches

REPO = Path(__file__).resolve().parent.parent


def random_model(folder: Path, bands=BANDS, patch=48) -> Path:
    """A small msmla18 with random weights and a card, so the pipeline runs before a trained model exists."""
    import keras

    from lczmap.nets import build

    keras.utils.set_random_seed(0)
    options = {"widths": [8, 16, 32]}
    folder.mkdir(parents=True)
    build("msmla18", (patch, patch, len(bands)), **options).save_weights(str(folder / "model.weights.h5"))
    stats = {"osm_buildings": (0.1, 0.2), "dsm": (5.0, 5.0), "landcover": (40.0, 20.0)}
    card = ModelCard(name=folder.name, network="msmla18", input_shape=(patch, patch, len(bands)), bands=tuple(bands),
                     mean=tuple(stats.get(b, (0.08, 0.05))[0] for b in bands),
                     std=tuple(stats.get(b, (0.08, 0.05))[1] for b in bands), network_options=options)
    write_card(card, folder)
    return folder


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return random_model(tmp_path_factory.mktemp("models") / "random13")


@pytest.fixture(scope="module")
def plan(demo_city, model):
    # Blocks of 16 cells: the 31 x 31 city is 4 blocks, so block seams are exercised.
    return plan_city(load_city_config(demo_city / "city.yaml"), model, block=16)


@pytest.fixture(scope="module")
def mapped(plan, tmp_path_factory):
    """One threaded run's probabilities and the files written from them (with the probabilities file)."""
    probs = compute_probabilities(plan, progress=False)
    out = tmp_path_factory.mktemp("map") / "lcz.tif"
    summary = write_outputs(plan, probs, out, probabilities_file=True, seconds={"stage": 1.0, "infer": 2.0})
    return probs, out, summary


def test_map_is_a_cog_on_the_city_grid(plan, mapped):
    _, out, _ = mapped
    valid, errors, _ = cog_validate(str(out), quiet=True)
    assert valid, errors
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == plan.grid.crs.epsg
        assert src.transform == plan.grid.output.affine and src.shape == plan.grid.output.shape
        assert src.descriptions == ("lcz_filtered",) and src.dtypes == ("uint8",) and src.nodata == 0
        shown = src.read(1)
    # The LCZ Generator's three bands, in their own file beside the map.
    with rasterio.open(output_paths(out)["lcz3"]) as src:
        assert src.descriptions == ("lcz", "lczFilter", "lczProbability")
        assert src.dtypes == ("uint8",) * 3 and src.nodata == 0 and src.transform == plan.grid.output.affine
        lcz, filtered, prob = src.read()
        colour_tags = src.tags()
    with rasterio.open(out) as src:
        tags = src.tags()
    aoi = plan.aoi_mask
    assert np.array_equal(shown, filtered)
    assert (lcz[~aoi] == 0).all() and (filtered[~aoi] == 0).all() and (prob[~aoi] == 0).all()
    assert lcz.max() <= 17 and (lcz[aoi] > 0).mean() > 0.5
    assert ((prob >= 6) & (prob <= 100))[lcz > 0].all()  # argmax of 17 probabilities is at least 1/17
    assert (filtered[lcz > 0] > 0).all()  # and cells without prediction are filled from their neighbours
    assert tags["model"] == plan.card.name and tags["model_weights_sha256"] == plan.card.weights_sha256
    assert "sentinel2" in json.loads(tags["inputs"]) and tags["lczmap_version"]
    colours = dict(item.split(":") for item in colour_tags["LCZ_COLOURS"].split(","))
    assert colours == {str(c.code): c.colour for c in lcz_classes()}


def test_probabilities_file(plan, mapped):
    probs, out, _ = mapped
    path = output_paths(out)["probabilities"]
    with rasterio.open(path) as src, rasterio.open(output_paths(out)["lcz3"]) as lcz_src:
        assert src.count == 18 and src.descriptions[0] == "lcz_1" and src.descriptions[-1] == "lczProbability"
        assert src.tags(11)["lcz"] == "A" and src.nodata == 0
        # Class probabilities are stored as percent + 1 (GDAL offset -1), so that 0 stays "no data".
        assert src.offsets == (-1.0,) * 17 + (0.0,)
        pct = src.read().astype(int) + np.array(src.offsets, int)[:, None, None]
        lcz = lcz_src.read(1)
    m = lcz > 0
    # Band 18 is the probability of the chosen raw class, which is the most probable one.
    rows, cols = np.nonzero(m)
    assert (pct[17][m] == pct[lcz[m] - 1, rows, cols]).all()
    assert (pct[17][m] == pct[:17].max(axis=0)[m]).all()
    assert np.abs(pct[:17].sum(axis=0)[m] - 100).max() <= 9  # 17 roundings of up to 0.5 %
    with rasterio.open(path) as src:
        assert (src.read()[:, ~plan.aoi_mask] == 0).all()


def test_summary_and_quicklook(plan, mapped):
    _, out, summary = mapped
    paths = output_paths(out)
    assert json.loads(paths["summary"].read_text()) == summary
    assert summary["area_band"] == "lczFilter"
    assert sum(c["km2"] for c in summary["classes"].values()) == pytest.approx(summary["mapped_km2"], abs=0.01)
    assert summary["mapped_km2"] + summary["aoi_shares"]["no class"] * summary["aoi_km2"] == pytest.approx(summary["aoi_km2"], abs=0.01)
    assert set(summary["seconds"]) == {"plan", "stage", "infer", "write", "total"} and summary["seconds"]["stage"] == 1.0
    assert summary["model"]["weights_sha256"] == plan.card.weights_sha256
    assert summary["grid"]["transform"] == list(plan.grid.output.affine)[:6]
    assert paths["quicklook"].read_bytes()[:4] == b"\x89PNG"
    assert 'band="1"' in paths["style"].read_text()  # QGIS draws lczFilter in the WUDAPT colours
    assert 'band="2"' in paths["lcz3_style"].read_text()
    assert not list(out.parent.glob(".*tmp"))


def test_pipeline_patch_equals_window_cut_by_hand_from_the_staged_stack(plan, demo_city):
    staged = stage_city(plan.config, plan.grid).data
    p = plan.card.patch_size
    start, f = plan.grid.patch_start(p), plan.grid.factor
    rows, cols = slice(16, 31), slice(0, 16)
    base_rows, base_cols = plan.grid.window(rows, cols, p)
    patches = BlockPatches(plan.read_window(base_rows, base_cols), plan.card, f, nodata_threshold=1.0)
    assert patches.valid.all()
    cells = patches.cells
    got = patches.batch(0, len(cells))
    # Reprojected sources (here the EPSG:4326 DSM, DTM and land cover) go through GDAL's approximate transformer
    # (within 10 cm, sources.base.WARP_TOLERANCE), which depends on the window: a staged chunk and a prediction
    # block may differ there by what a 10 cm shift makes. Every other band is identical.
    bands = list(plan.card.bands)
    warped = [bands.index(b) for b in ("dsm", "landcover") if b in bands]
    same = [k for k in range(len(bands)) if k not in warped]
    for k in (0, len(cells) // 2, len(cells) - 1):
        i, j = cells[k] + (rows.start, cols.start)
        window = staged[:, start + i * f: start + i * f + p, start + j * f: start + j * f + p].values
        expected = np.nan_to_num(plan.card.normalise(window.transpose(1, 2, 0)[None])[0], nan=0.0)
        assert np.array_equal(got[k][..., same], expected[..., same])
        if "dsm" in bands:  # heights within 0.5 m
            d = bands.index("dsm")
            assert np.abs(got[k][..., d] - expected[..., d]).max() * plan.card.std[d] < 0.5
        if "landcover" in bands:  # a class changes only at a source pixel edge
            c = bands.index("landcover")
            assert (got[k][..., c] != expected[..., c]).mean() < 0.01


def test_same_result_with_two_worker_processes(plan, mapped):
    probs, _, _ = mapped
    assert block_tasks(plan).numblocks == (1, 2, 2)
    again = compute_probabilities(plan, workers=2, progress=False)
    assert np.array_equal(np.isnan(again), np.isnan(probs))
    assert np.array_equal(np.nanargmax(np.nan_to_num(again, nan=-1), axis=0), np.nanargmax(np.nan_to_num(probs, nan=-1), axis=0))
    assert np.allclose(again, probs, atol=1e-5, equal_nan=True)


def run(*args):
    return CliRunner().invoke(cli, ["-q", "predict", *map(str, args)])


def test_cli_lonlat_without_filter(demo_city, model, tmp_path):
    out = tmp_path / "lcz4326.tif"
    result = run("--config", demo_city / "city.yaml", "--model", model, "--crs", "EPSG:4326", "--no-filter", "--out", out)
    assert result.exit_code == 0, result.output
    assert cog_validate(str(out), quiet=True)[0]
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == 4326 and src.descriptions == ("lcz",)
        assert src.res[0] == pytest.approx(src.res[1]) and 0.0007 < src.res[0] < 0.0013  # ~100 m in degrees
        lcz = src.read(1)
        corner = src.read(1, window=((0, 1), (0, 1)))
    assert set(np.unique(lcz)) - {0} <= set(range(1, 18)) and (lcz > 0).sum() > 500
    assert corner[0, 0] == 0  # outside the rotated UTM footprint / AOI
    with rasterio.open(output_paths(out)["lcz3"]) as src:
        assert src.crs.to_epsg() == 4326 and src.descriptions == ("lcz", "lczProbability")
    summary = json.loads(output_paths(out)["summary"].read_text())
    assert summary["grid"]["output_crs"] == "EPSG:4326" and summary["area_band"] == "lcz"


@pytest.mark.parametrize("case", ["unknown_model", "band_without_input", "missing_folder", "out_is_folder", "bad_s2", "bad_crs"])
def test_cli_bad_input_is_one_line_and_writes_nothing(case, demo_city, model, tmp_path):
    config = demo_city / "city.yaml"
    out = tmp_path / "lcz.tif"
    args = ["--config", config, "--model", model, "--out", out]
    if case == "unknown_model":
        args[3] = "no-such-model"
        expected = "--model no-such-model"
    elif case == "band_without_input":
        doc = yaml.safe_load(config.read_text())
        doc.pop("osm")
        doc = {k: (str(demo_city / v) if k in PATH_KEYS else v) for k, v in doc.items()}
        config = tmp_path / "city.yaml"
        config.write_text(yaml.safe_dump(doc))
        args[1] = config
        expected = "osm_buildings"
    elif case == "missing_folder":
        args[-1] = out = tmp_path / "nope" / "lcz.tif"
        expected = "does not exist"
    elif case == "out_is_folder":
        args[-1] = out = tmp_path
        expected = "is a folder"
    elif case == "bad_s2":
        args += ["--s2", tmp_path / "missing.SAFE"]
        expected = "missing.SAFE"
    else:
        args += ["--crs", "EPSG:999999"]
        expected = "--crs"
    result = run(*args)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and expected in lines[0], result.output
    assert "Traceback" not in result.output
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".tif", ".png", ".json", ".tmp")]


def test_failed_write_leaves_no_partial_files(plan, mapped, tmp_path, monkeypatch):
    import lczmap.outputs

    probs, _, _ = mapped
    real = lczmap.outputs.translate_cog

    def fail_on_probabilities(vrt, path, *args, **kwargs):
        if "probabilities" in path.name:
            raise OSError("disk full")
        return real(vrt, path, *args, **kwargs)

    monkeypatch.setattr(lczmap.outputs, "translate_cog", fail_on_probabilities)
    with pytest.raises(OSError):
        write_outputs(plan, probs, tmp_path / "lcz.tif", probabilities_file=True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_shipped_model_maps_an_unseen_city_as_well_as_its_card_says(tmp_path):
    """The demo model's card gives patch-level OA on unseen cities: on their reference polygons and on every cell."""
    from rasterio.features import rasterize

    from lczmap.demo import generate
    from lczmap.evaluate import read_reference

    card = load_card("msmla18-demo")
    card_ref = card.metrics["test:unseen_ref.h5"]["oa"]
    card_all = card.metrics["test:unseen_all.h5"]["oa"]
    city = generate(tmp_path / "city", seed=DEMO_SEED, size_km=6)
    out = tmp_path / "lcz.tif"
    predict_city(load_city_config(city), out, model="msmla18-demo", progress=False)
    with rasterio.open(out) as src, rasterio.open(city.parent / "truth_lcz.tif") as truth_src:
        lcz, truth = src.read(1), truth_src.read(1)
        assert truth_src.transform == src.transform
        polygons, codes = read_reference(city.parent / "reference.geojson", "lcz", src.crs)
        in_reference = rasterize(zip(polygons.geometry, codes), out_shape=lcz.shape, transform=src.transform, dtype="uint8")
    both = (lcz > 0) & (truth > 0)
    assert both.sum() > 400
    oa_all = (lcz[both] == truth[both]).mean()
    ref = (lcz > 0) & (in_reference > 0)
    oa_ref = (lcz[ref] == in_reference[ref]).mean()
    assert oa_all >= card_all - 0.05, f"map OA on every cell {oa_all:.3f} vs card {card_all:.3f}"
    assert oa_ref >= card_ref - 0.05, f"map OA on reference polygons {oa_ref:.3f} vs card {card_ref:.3f}"


def test_df4lcz_fuses_the_vhr_stream_only_when_there_is_vhr(demo_city, tmp_path, caplog):
    import keras

    from lczmap.inference import predict_block
    from lczmap.nets import build
    from lczmap.stage import S2_BANDS

    keras.utils.set_random_seed(1)
    folder = tmp_path / "df4lcz"
    folder.mkdir()
    build("df4lcz", (32, 32, 10), alpha=0.6).save_weights(str(folder / "model.weights.h5"))
    write_card(ModelCard(name="df", network="df4lcz", input_shape=(32, 32, 10), bands=S2_BANDS, mean=(0.08,) * 10,
                         std=(0.05,) * 10, network_options={"alpha": 0.6}), folder)
    config = load_city_config(demo_city / "city.yaml")
    with caplog.at_level("INFO", logger="lczmap"):
        s2_only = plan_city(config, folder, vhr=False, nodata_threshold=1.0)
    assert "Sentinel-2 stream of df alone" in caplog.text and not s2_only.use_vhr
    fused = plan_city(config, folder, nodata_threshold=1.0)
    assert fused.use_vhr
    rows, cols = slice(12, 15), slice(12, 15)
    p_s2, p_fused = predict_block(s2_only, rows, cols), predict_block(fused, rows, cols)
    assert not np.isnan(p_s2).any() and not np.isnan(p_fused).any()
    # Fused = 0.6 * P_s2 + 0.4 * P_gcn, with P_gcn a distribution from the VHR segment graphs.
    p_gcn = (p_fused - 0.6 * p_s2) / 0.4
    assert np.allclose(p_gcn.sum(axis=0), 1, atol=1e-4) and (p_gcn > -1e-4).all()
    assert not np.allclose(p_fused, p_s2, atol=1e-3)
