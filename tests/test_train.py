"""`lczmap train`: public dataset readers, streaming batches, class weights, an end-to-end run with resume, bad input."""

import json
import pickle
import re
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import assert_same_stack

from lczmap.cli import cli
from lczmap.train.augment import dihedral
from lczmap.train.datasets import S2_BANDS, band_statistics, open_source, split_fraction

STACK_BANDS = S2_BANDS + ("osm_buildings", "dsm", "landcover")
TOY_CLASSES = (2, 6, 11, 14)


def write_h5(path: Path, n: int, patch: int, n_bands: int, seed: int, classes=TOY_CLASSES, bands=None, groups=None) -> Path:
    """So2Sat/MSMLA layout: `sen2` (n, p, p, b), one-hot `label`. Class k raises band k: separable by band means."""
    rng = np.random.default_rng(seed)
    labels = np.resize(np.array(classes), n)
    rng.shuffle(labels)
    x = rng.normal(0.1, 0.02, (n, patch, patch, n_bands))
    for i, code in enumerate(labels):
        x[i, :, :, classes.index(code)] += 0.3
    with h5py.File(path, "w") as f:
        f["sen2"] = x  # float64 like the So2Sat release
        f["label"] = np.eye(17)[labels - 1]
        if bands:
            f["sen2"].attrs["bands"] = list(bands)
        if groups is not None:
            f["polygon"] = groups
    return path


def write_ges2(folder: Path, n: int = 30, seed: int = 0) -> Path:
    """A LCZC-GES2 folder: npz image patches, npz graphs of 3-8 nodes, and a pickled random partition."""
    rng = np.random.default_rng(seed)
    for sub in ("sen2_img_patches", "gg_nodes_refine", "patches_split"):
        (folder / sub).mkdir(parents=True)
    labels = np.resize(np.array(TOY_CLASSES), n)
    for i, code in enumerate(labels):
        image = rng.normal(0.1, 0.02, (32, 32, 10)).astype(np.float32)
        image[..., TOY_CLASSES.index(code)] += 0.3
        np.savez(folder / "sen2_img_patches" / f"sen2_image_{i}.npz", image=image, label=np.int64(code))
        nodes = int(rng.integers(3, 9))
        x = rng.random((nodes, 5)).astype(np.float32)
        x[:, 0] = TOY_CLASSES.index(code) / 4  # mean red tells the class
        a = 1.0 - np.eye(nodes)
        np.savez(folder / "gg_nodes_refine" / f"graph_{i}.npz", x=x, a=a, y=np.eye(17)[code - 1])
    order = rng.permutation(n)
    split = {"train": list(order[: n // 2]), "validation": list(order[n // 2 : 3 * n // 4]), "test": list(order[3 * n // 4 :])}
    with open(folder / "patches_split" / "partition_random.npz", "wb") as f:
        pickle.dump(split, f)
    return folder


def run(*args: str):
    return CliRunner().invoke(cli, ["-q", *args], catch_exceptions=False)


def test_formats_are_detected_and_read_by_index(tmp_path):
    so2sat = open_source(write_h5(tmp_path / "training.h5", 20, 32, 10, 0))
    assert so2sat.format == "so2sat" and so2sat.bands == S2_BANDS and so2sat.patch == 32
    msmla = open_source(write_h5(tmp_path / "m_train.h5", 20, 48, 13, 1, bands=STACK_BANDS))
    assert msmla.format == "msmla" and msmla.bands == STACK_BANDS and msmla.patch == 48
    with h5py.File(tmp_path / "m_train.h5") as f:
        want_x, want_y = f["sen2"][[2, 7, 11]], f["label"][[2, 7, 11]].argmax(axis=1) + 1
    got = msmla.read(np.array([11, 2, 7]))  # any order in, same order out
    np.testing.assert_allclose(got, want_x[[2, 0, 1]].astype(np.float32))
    np.testing.assert_array_equal(msmla.labels[[2, 7, 11]], want_y)

    ges2 = open_source(write_ges2(tmp_path / "ges2"), split="validation")
    assert ges2.format == "ges2" and ges2.n == 7 and ges2.has_graphs
    g = ges2.read_graphs(np.arange(3))
    assert g["x"].shape == (3, 50, 5) and g["a"].shape == (3, 50, 50)
    nodes = g["mask"].sum(axis=1).astype(int)
    assert all(g["a"][k, : nodes[k], : nodes[k]].sum() == nodes[k] * (nodes[k] - 1) for k in range(3))
    assert g["a"][:, nodes.max():].sum() == 0  # padding stays empty
    with np.load(tmp_path / "ges2" / "sen2_img_patches" / f"sen2_image_{ges2.ids[1]}.npz") as z:
        np.testing.assert_allclose(ges2.read(np.array([1]))[0], z["image"])
        assert ges2.labels[1] == int(z["label"])


def test_band_statistics_stream_matches_numpy(tmp_path):
    path = write_h5(tmp_path / "d.h5", 23, 8, 3, 2, classes=(1, 2, 3), bands=("a", "b", "c"))
    with h5py.File(path, "r+") as f:
        x = f["sen2"][:]
        x[4, :3, :, 1] = np.nan  # nodata is ignored
        f["sen2"][4] = x[4]
    src = open_source(path)
    idx = np.array([0, 3, 4, 5, 9, 10, 11, 17, 22])
    mean, std = band_statistics(src, idx, chunk=4, progress=False)
    sel = x[np.sort(idx)].astype(np.float32).astype(np.float64).reshape(-1, 3)  # patches are read as float32
    np.testing.assert_allclose(mean, np.nanmean(sel, axis=0), rtol=1e-10)
    np.testing.assert_allclose(std, np.nanstd(sel, axis=0), rtol=1e-8)


def test_balanced_class_weights():
    from lczmap.train.sequence import balanced_class_weights

    labels = np.array([1, 1, 3, 3, 3, 3, 3, 3])
    w = balanced_class_weights(labels)
    assert w[0] == pytest.approx(8 / (2 * 2)) and w[2] == pytest.approx(8 / (2 * 6))
    assert w[[1, *range(3, 17)]].sum() == 0  # absent classes
    assert w[labels - 1].mean() == pytest.approx(1.0)  # per-sample weights keep the loss scale
    assert (w[labels - 1][labels == 1].sum()) == pytest.approx(w[labels - 1][labels == 3].sum())  # classes weigh the same


def test_fraction_split_keeps_polygons_whole(tmp_path):
    groups = np.repeat(np.arange(16), 4)  # 16 polygons of 4 patches; polygon k has class TOY_CLASSES[k % 4]
    path = write_h5(tmp_path / "c.h5", 64, 8, 13, 3, bands=STACK_BANDS, groups=groups)
    with h5py.File(path, "r+") as f:
        f["label"][...] = np.eye(17)[np.array(TOY_CLASSES)[groups % 4] - 1]
    src = open_source(path)
    train, val = split_fraction(src, 0.25, seed=1)
    assert not set(groups[train]) & set(groups[val])
    assert sorted(np.concatenate([train, val])) == list(range(64))
    assert sorted(set(src.labels[val])) == sorted(TOY_CLASSES)  # stratified: each class has one validation polygon
    assert len(val) == 16


def test_sequence_shuffles_per_epoch_and_keeps_labels_with_patches(tmp_path):
    from lczmap.train.sequence import PatchSequence

    path = write_h5(tmp_path / "s.h5", 40, 8, 13, 4, bands=STACK_BANDS)
    with h5py.File(path, "r+") as f:  # every patch carries its own index, to check labels follow patches
        x = f["sen2"][:]
        x[..., 12] = np.arange(40)[:, None, None]
        f["sen2"][...] = x
        codes = f["label"][:].argmax(axis=1) + 1
    src = open_source(path)
    seq = PatchSequence(src, np.arange(40), 16, shuffle=True, seed=5, class_weights=np.ones(17))
    seen = []
    for epoch in (0, 1):
        seq.epoch = epoch
        batches = [seq[i] for i in range(len(seq))]
        ids = np.concatenate([b[0][:, 0, 0, 12] for b in batches]).astype(int)
        labels = np.concatenate([b[1].argmax(axis=1) + 1 for b in batches])
        np.testing.assert_array_equal(labels, codes[ids])
        assert sorted(ids) == list(range(40))
        seen.append(ids)
    assert not np.array_equal(seen[0], seen[1])
    seq.epoch = 0
    np.testing.assert_array_equal(np.concatenate([seq[i][0][:, 0, 0, 12] for i in range(len(seq))]).astype(int), seen[0])


def test_dihedral_gives_one_of_the_eight_symmetries():
    x = np.random.default_rng(0).random((50, 5, 5, 2)).astype(np.float32)
    y = dihedral(x, np.random.default_rng(1))
    variants = lambda p: [np.rot90(p, k, axes=(0, 1))[:, ::m] for k in range(4) for m in (1, -1)]  # noqa: E731
    assert all(any(np.array_equal(y[i], v) for v in variants(x[i])) for i in range(50))
    assert not np.array_equal(x, y)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Epoch 1 of msmla18 on 64 MSMLA-format patches, then a rerun with --epochs 2 that resumes.

    The first run traces the Keras graph as real training does; the resumed one runs eagerly (--eager), which
    checks that a checkpoint carries over between the modes and keeps the test fast.
    """
    tmp = tmp_path_factory.mktemp("train")
    data = write_h5(tmp / "toy_train.h5", 64, 48, 13, 10, bands=STACK_BANDS)
    val = write_h5(tmp / "toy_val.h5", 32, 48, 13, 11, bands=STACK_BANDS)
    out = tmp / "model"
    args = ["train", "--data", str(data), "--val", str(val), "--network", "msmla18", "--batch-size", "8", "--seed", "3", "--out", str(out)]
    t0 = time.perf_counter()
    first = run(*args, "--epochs", "1")
    after_first = json.loads((out / "checkpoint" / "state.json").read_text())
    first_command = json.loads((out / "card.json").read_text())["command"]
    second = run(*args, "--epochs", "2", "--eager")
    return {"out": out, "val": val, "first": first, "second": second, "after_first": after_first, "first_command": first_command,
            "seconds": time.perf_counter() - t0}


def test_training_writes_a_complete_model_folder(trained):
    assert trained["first"].exit_code == 0, trained["first"].output
    assert trained["second"].exit_code == 0, trained["second"].output
    out = trained["out"]
    for name in ("model.weights.h5", "card.json", "training_curves.png", "confusion_matrix.png", "history.json"):
        assert (out / name).stat().st_size > 0, name
    card = json.loads((out / "card.json").read_text())
    assert card["network"] == "msmla18" and card["input_shape"] == [48, 48, 13] and card["patch_size"] == 48
    assert card["bands"] == list(STACK_BANDS) and len(card["mean"]) == len(card["std"]) == 13
    assert card["mean"][0] == pytest.approx(0.175, abs=0.01)  # a quarter of the patches raise band 1 by 0.3
    assert card["classes"] == list(range(1, 18))
    t = card["training"]
    assert t["n_train"] == 64 and t["n_validation"] == 32 and t["epochs_run"] == 2 and t["optimizer"] == "Nadam"
    assert t["class_counts"] == {"2": 16, "6": 16, "11": 16, "14": 16}
    assert set(t["class_weights"].values()) == {1.0}
    assert card["weights_sha256"] and card["lczmap_version"]
    want = r"lczmap train --data \S+ --network msmla18 --out \S+ --val \S+ --epochs 2 --batch-size 8 --seed 3 --eager"
    assert re.fullmatch(want, card["command"]), card["command"]
    assert trained["first_command"].endswith("--epochs 1 --batch-size 8 --seed 3"), trained["first_command"]
    v = card["metrics"]["validation"]
    assert v["n"] == 32 and {"oa", "oa_u", "oa_bu", "oa_w", "kappa", "f1_weighted", "per_class"} <= set(v)


def test_weights_go_through_a_temporary_of_the_project_naming_and_a_failed_save_leaves_the_good_file(tmp_path, monkeypatch):
    import keras

    from lczmap.train.trainer import save_weights_atomic

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    path = tmp_path / "model.weights.h5"
    save_weights_atomic(model, path)
    good = path.read_bytes()
    written = []

    def full_disk(self, filepath, *args, **kwargs):
        written.append(filepath)
        Path(filepath).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keras.Model, "save_weights", full_disk)
    with pytest.raises(OSError):
        save_weights_atomic(model, path)
    assert re.fullmatch(r".*/\.model\.weights\.h5\.\d+\.tmp/model\.weights\.h5", written[0]), written
    assert [p.name for p in tmp_path.iterdir()] == ["model.weights.h5"] and path.read_bytes() == good


def test_resume_trains_only_the_missing_epoch(trained):
    before, out = trained["after_first"], trained["out"]
    assert before["epoch"] == 1 and len(before["history"]["loss"]) == 1
    after = json.loads((out / "checkpoint" / "state.json").read_text())
    assert after["epoch"] == 2 and len(after["history"]["loss"]) == 2
    assert after["history"]["loss"][0] == before["history"]["loss"][0]  # epoch 1 was not retrained
    assert json.loads((out / "history.json").read_text())["loss"] == after["history"]["loss"]


def test_reloaded_model_beats_chance_and_matches_its_card(trained):
    import keras

    from lczmap.card import load_card, load_model

    card = load_card(trained["out"])
    model = load_model(card)
    with h5py.File(trained["val"]) as f:
        x, codes = f["sen2"][:], f["label"][:].argmax(axis=1) + 1
    pred = keras.ops.convert_to_numpy(model(card.normalise(x), training=False)).argmax(axis=1) + 1
    oa = float((pred == codes).mean())
    assert oa == pytest.approx(card.metrics["validation"]["oa"])
    assert oa > 1 / len(TOY_CLASSES) + 0.1, f"validation OA {oa} is no better than chance"
    print(f"2-epoch run (two invocations, with resume): {trained['seconds']:.1f} s")


def test_changed_run_in_same_folder_is_refused(trained, tmp_path):
    data = write_h5(tmp_path / "other.h5", 16, 48, 13, 12, bands=STACK_BANDS)
    result = run("train", "--data", str(data), "--out", str(trained["out"]), "--epochs", "3")
    assert result.exit_code == 1
    assert "holds a checkpoint of a different run" in result.output and len(result.output.strip().splitlines()) == 1


def test_graph_network_trains_on_ges2(tmp_path):
    folder = write_ges2(tmp_path / "ges2", n=24)
    out = tmp_path / "gcn"
    result = run("train", "--data", str(folder), "--network", "df4lcz_gcn", "--epochs", "1", "--batch-size", "8", "--eager",
                 "--out", str(out))
    assert result.exit_code == 0, result.output
    card = json.loads((out / "card.json").read_text())
    assert card["network"] == "df4lcz_gcn" and card["bands"] == [] and card["input_shape"] == [50, 5]
    assert card["training"]["n_train"] == 12 and card["training"]["n_validation"] == 6
    assert "partition_random" in card["training"]["split"]


def test_city_samples_are_the_prediction_windows_of_reference_cells(demo_city_config, tmp_path):
    import shapely

    from lczmap.aoi import read_aoi
    from lczmap.config import load_city_config
    from lczmap.evaluate import read_reference
    from lczmap.grid import city_grid
    from lczmap.stage import BANDS, plan_stage, read_chunk
    from lczmap.train.city_patches import sample_city

    out = sample_city(demo_city_config, tmp_path / "city.h5", progress=False)
    config = load_city_config(demo_city_config)
    grid = city_grid(read_aoi(config.aoi), patch=48)
    polygons, codes = read_reference(config.reference, config.reference_column, grid.crs.to_wkt())
    with h5py.File(out) as f:
        x, labels = f["sen2"], f["label"][:].argmax(axis=1) + 1
        poly, cells = f["polygon"][:], f["cell"][:]
        assert list(x.attrs["bands"]) == list(BANDS) and x.shape[1:] == (48, 48, 13) and x.dtype == np.float32
        n_cells = sum(int(shapely.contains_xy(g, *grid.output.affine * (np.indices(grid.output.shape)[::-1] + 0.5)).sum())
                      for g in polygons.geometry)
        assert len(labels) + f.attrs["skipped_nodata"] == n_cells > 20
        np.testing.assert_array_equal(labels, codes[poly])  # each patch has its polygon's class
        centres = np.column_stack(grid.output.affine * (cells[:, 1] + 0.5, cells[:, 0] + 0.5))
        assert all(polygons.geometry.iloc[p].contains(shapely.Point(c)) for p, c in zip(poly, centres, strict=True))
        plan = plan_stage(config, grid)
        h, w = grid.output.shape
        for k in (0, len(labels) // 2, len(labels) - 1):  # the patch is what prediction reads for that cell
            r, c = cells[k]
            r0, c0 = min(r, h - 10), min(c, w - 10)  # a 10 x 10-cell block holding the cell, as prediction reads blocks
            block = read_chunk(plan, *grid.window(slice(r0, r0 + 10), slice(c0, c0 + 10), 48))
            dr, dc = (r - r0) * grid.factor, (c - c0) * grid.factor
            assert_same_stack(x[k].transpose(2, 0, 1), block[:, dr : dr + 48, dc : dc + 48])
    mtime = out.stat().st_mtime_ns
    assert sample_city(demo_city_config, out, progress=False) == out and out.stat().st_mtime_ns == mtime  # reused


def test_train_on_a_city(demo_city_config, tmp_path):
    out = tmp_path / "citymodel"
    result = run("train", "--city", str(demo_city_config), "--epochs", "1", "--batch-size", "64", "--eager", "--out", str(out))
    assert result.exit_code == 0, result.output
    card = json.loads((out / "card.json").read_text())
    assert card["bands"] == list(STACK_BANDS) and card["patch_size"] == 48
    t = card["training"]
    assert t["cities"] == [str(demo_city_config.resolve())] and "polygons" in t["split"]
    assert (out / "samples").is_dir() and t["n_train"] + t["n_validation"] > 20


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "missing.h5"], "missing.h5: training data does not exist"),
        (["--data", "{text}"], "not an HDF5 file"),
        (["--data", "{nolabel}"], "lacks dataset(s) ['label']"),
        (["--data", "{good}", "--network", "resnet99"], "--network resnet99: unknown"),
        (["--data", "{good}", "--option", "cbam"], "--option cbam: expected KEY=VALUE"),
        (["--data", "{good}", "--option", "colour=red"], "network option 'colour' for msmla18: unknown"),
        (["--data", "{good}", "--network", "df4lcz_gcn"], "needs segment graphs"),
        (["--data", "{good}", "--bands", "B02,B99"], "--bands B99: not in"),
        ([], "give training data with --data FILE or --city city.yaml"),
    ],
)
def test_bad_input_gives_one_line_error(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("not hdf5")
    with h5py.File(tmp_path / "nolabel.h5", "w") as f:
        f["sen2"] = np.zeros((2, 32, 32, 10))
    good = write_h5(tmp_path / "good.h5", 8, 32, 10, 0)
    names = {"text": "notes.txt", "nolabel": "nolabel.h5", "good": str(good)}
    result = run("train", *[a.format(**names) for a in args], "--out", str(tmp_path / "m"))
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output
    assert not (tmp_path / "m").exists()  # nothing half-written
