"""Published models: `lczmap models import` of the real So2Sat LCZ42 Sen2LCZ-Net release, its refusals, `models pull`
from a local HTTP server, the card's new fields, and a known-answer test on real Sentinel-2 patches.

Reads ../shared/models/so2sat-sen2lcz (the release's weights and test predictions, MIT, Copyright (c) 2021
ChunpingQiu; Qiu et al. 2020, IEEE JSTARS 13) and ../shared/realdata/sentinel2 (BigEarthNet patches,
CDLA-Permissive-1.0); see their PROVENANCE.md files. Skipped where ../shared is absent.
"""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.enums import Resampling
from scipy.io import loadmat

from lczmap.card import available_models, load_card, load_model, model_cache, verify_weights
from lczmap.cli import cli
from lczmap.errors import LczmapError
from lczmap.models_store import PUBLISHED, URL_ENV, pull_model

SHARED = Path(__file__).resolve().parents[2] / "shared"
RELEASE = SHARED / "models" / "so2sat-sen2lcz"
WEIGHTS = RELEASE / "_32_weights.best.hdf5"
PATCHES = SHARED / "realdata" / "sentinel2"
pytestmark = pytest.mark.skipif(not WEIGHTS.is_file(), reason="../shared/models/so2sat-sen2lcz is not here")
SO2SAT = PUBLISHED["so2sat-sen2lcz"]


def run(*args: str):
    result = CliRunner().invoke(cli, list(args))
    return result, [ln for ln in result.output.splitlines() if ln.startswith("Error:")]


def assert_refused(args: list[str], needle: str, cache: Path) -> None:
    """One Error line naming the problem, exit 1, no traceback, and nothing in the model cache."""
    result, errors = run(*args)
    assert result.exit_code == 1 and len(errors) == 1 and "Traceback" not in result.output, result.output
    assert needle in errors[0], errors[0]
    assert not (cache / "models").exists() or not [p for p in (cache / "models").rglob("*") if p.is_file()]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """The shared release imported once, with `lczmap models import`, into a module-wide cache."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LCZMAP_CACHE", str(cache))
        result, _ = run("models", "import", str(WEIGHTS), "--as", "so2sat-sen2lcz")
        assert result.exit_code == 0, result.output
        assert "OA 0.694, kappa 0.664" in result.output
        yield load_card("so2sat-sen2lcz"), cache


def test_import_writes_a_keras3_model_folder_with_the_published_card(imported):
    card, cache = imported
    assert card.folder == cache / "models" / "so2sat-sen2lcz"
    assert sorted(p.name for p in card.folder.iterdir()) == ["card.json", "model.weights.h5"]
    verify_weights(card)
    assert card.network == "sen2lcz" and card.input_shape == (32, 32, 10) and card.patch_size == 32
    assert card.bands == ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
    assert card.mean == (0.0,) * 10 and card.std == (1.0,) * 10  # DN / 10000 = staged reflectance, unnormalised
    assert card.network_options == {"depth": 17, "width": 16, "fusion": True, "dropout": 0.2}
    assert card.product_level == "L1C" and card.synthetic is False
    assert set(card.trained_on) == {"regions", "dates", "label_source"}
    src = card.source
    assert src["sha256"] == "2ca98e4adb7d67cc0f69e8168826b763eb7df8cb6ca508689fa34c171e2e8b2a" and src["published_file"]
    assert src["commit"] == "7675acd4895a8a5e87c7a3f90407b8f6772aa8ed" and src["url"].endswith("/results/_32_weights.best.hdf5")
    assert "MIT" in src["licence"] and "JSTARS" in src["citation"] and "/ 10000" in src["input_convention"]


def test_card_metrics_are_computed_from_the_release_predictions(imported):
    card, _ = imported
    test = card.metrics["test:so2sat-lcz42"]
    mat = loadmat(RELEASE / "Acc_32.mat")
    assert test["n"] == 24_188
    assert round(test["oa"], 3) == 0.694 and test["oa"] == pytest.approx(float(mat["oa"][0, 0]), abs=1e-9)
    assert round(test["kappa"], 3) == 0.664 and test["kappa"] == pytest.approx(float(mat["cohKappa"][0, 0]), abs=1e-9)
    np.testing.assert_array_equal(np.array(test["confusion_matrix"]), mat["confusion_matrix"])
    # the release's classification report: LCZ A (11) precision 0.95 recall 0.87, LCZ 13 (C) recall 0.05
    assert round(test["per_class"]["11"]["ua"], 2) == 0.95 and round(test["per_class"]["11"]["pa"], 2) == 0.87
    assert round(test["per_class"]["13"]["pa"], 2) == 0.05


def bigearthnet_windows(folder: Path) -> np.ndarray:
    """The 81 windows of 32 x 32 px (step 11) of a 120 x 120 px patch: the card's bands as DN / 10000, 20 m bands
    bilinear to 10 m."""
    card_bands = SO2SAT.bands
    layers = []
    for band in card_bands:
        with rasterio.open(next(folder.glob(f"*_{band}.tif"))) as src:
            layers.append(src.read(1, out_shape=(120, 120), resampling=Resampling.bilinear).astype(np.float32) / 10000)
    image = np.stack(layers, axis=-1)
    return np.stack([image[r:r + 32, c:c + 32] for r in range(0, 89, 11) for c in range(0, 89, 11)])


@pytest.mark.skipif(not PATCHES.is_dir(), reason="../shared/realdata/sentinel2 is not here")
def test_known_answer_on_real_patches(imported):
    """PROVENANCE.md's check: the arable BigEarthNet patch is mostly LCZ D, the forest patch mostly LCZ A (73 and 74
    of 81 windows there; swapping the two 128-feature heads gives 65 and 70), and x 10 scaling breaks it."""
    card, _ = imported
    model = load_model(card)

    def classes(windows: np.ndarray) -> np.ndarray:
        probs = np.asarray(model.predict(card.normalise(windows), verbose=0))
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
        return probs.argmax(axis=1) + 1

    arable = bigearthnet_windows(PATCHES / "S2A_MSIL2A_20170613T101031_87_48")
    forest = bigearthnet_windows(PATCHES / "S2B_MSIL2A_20170924T93020_69_24")
    assert (classes(arable) == 14).sum() >= 70  # LCZ D, low plants
    assert (classes(forest) == 11).sum() >= 72  # LCZ A, dense trees
    assert (classes(arable * 10) == 14).sum() < 40


def test_head_mapping_follows_the_files_layer_order():
    """Keras 2 lists layers of one depth in the order of the Average's inputs; the release averages [final head,
    side 1, side 2, side 3], so the file's dense layers in that order are the final head and the side heads."""
    with h5py.File(WEIGHTS, "r") as f:
        dense = [n.decode() for n in f.attrs["layer_names"] if n.decode().startswith("dense_")]
    assert dense == ["dense_4", "dense_1", "dense_2", "dense_5"]
    assert [SO2SAT.layer_map[n] for n in dense] == ["fc17", "side1_fc", "side2_fc", "side3_fc"]


def altered_copy(tmp_path: Path, change) -> Path:
    path = tmp_path / "altered.hdf5"
    shutil.copyfile(WEIGHTS, path)
    with h5py.File(path, "r+") as f:
        change(f)
    return path


def _extra_weight(f):
    f["dense_5"].create_dataset("dense_5/extra:0", data=np.zeros(3, np.float32))


def _missing_head(f):
    del f["dense_5"]


def _wrong_shape(f):
    del f["conv2d_1/conv2d_1/kernel:0"]
    f.create_dataset("conv2d_1/conv2d_1/kernel:0", data=np.zeros((3, 3, 13, 16), np.float32))


def _not_finite(f):
    f["dense_1/dense_1/bias:0"][0] = np.nan


def _external_data(f):
    outside = Path(f.filename).with_name("outside.bin")
    outside.write_bytes(bytes(17 * 4))
    del f["dense_1/dense_1/bias:0"]
    f.create_dataset("dense_1/dense_1/bias:0", shape=(17,), dtype="f4", external=[(str(outside), 0, 17 * 4)])


@pytest.mark.parametrize("change, needle", [
    (_extra_weight, "not used by sen2lcz: dense_5/extra"),
    (_missing_head, "has no weight dense_5/kernel"),
    (_wrong_shape, "conv2d_1/kernel has shape (3, 3, 13, 16)"),
    (_not_finite, "dense_1/bias holds non-finite values"),
    (_external_data, "keeps its data outside the file"),
])
def test_import_refuses_a_file_that_does_not_fit(tmp_path, monkeypatch, change, needle):
    monkeypatch.setenv("LCZMAP_CACHE", str(tmp_path / "cache"))
    path = altered_copy(tmp_path, change)
    assert_refused(["models", "import", str(path), "--as", "x"], "is not a published model's weights file", tmp_path / "cache")
    assert_refused(["models", "import", str(path), "--as", "x", "--like", "so2sat-sen2lcz"], needle, tmp_path / "cache")


def test_import_refuses_bad_files_and_names(tmp_path, monkeypatch):
    monkeypatch.setenv("LCZMAP_CACHE", str(tmp_path / "cache"))
    text = tmp_path / "weights.hdf5"
    text.write_text("not hdf5")
    cache = tmp_path / "cache"
    assert_refused(["models", "import", str(text), "--as", "x", "--like", "so2sat-sen2lcz"], "not a readable HDF5", cache)
    assert_refused(["models", "import", "/dev/zero", "--as", "x"], "is not a regular file", cache)
    assert_refused(["models", "import", str(WEIGHTS), "--as", "../evil"], "--as '../evil'", cache)
    assert_refused(["models", "import", str(WEIGHTS), "--as", "msmla18-demo"], "already exists", cache)
    assert_refused(["models", "import", str(text), "--as", "x", "--like", "nope"], "--like nope", cache)
    assert_refused(["models", "import", str(WEIGHTS), "--as", "x", "--results", str(text)],
                   "not so2sat-sen2lcz's results/Acc_32.mat", cache)


def test_import_of_a_same_layout_file_has_no_published_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("LCZMAP_CACHE", str(tmp_path / "cache"))
    path = altered_copy(tmp_path, lambda f: f["dense_1/dense_1/bias:0"].__setitem__(0, 0.5))
    result, _ = run("models", "import", str(path), "--as", "retrained", "--like", "so2sat-sen2lcz")
    assert result.exit_code == 0, result.output
    card = load_card("retrained")
    assert card.metrics == {} and card.source["published_file"] is False and card.source["url"] == ""
    assert card.product_level == "L1C" and card.source["sha256"] != SO2SAT.weights.sha256
    for extra, needle in [([], "already exists"), (["--results", str(RELEASE / "Acc_32.mat")], "only the published")]:
        assert_refused(["models", "import", str(path), "--as", "retrained", "--like", "so2sat-sen2lcz", *extra], needle,
                       tmp_path / "nothing")
    result, _ = run("models", "import", str(path), "--as", "retrained", "--like", "so2sat-sen2lcz", "--force")
    assert result.exit_code == 0, result.output


class Release:
    """A local HTTP server on a free port serving a copy of the release's files at their paths, counting requests."""

    def __init__(self, root: Path):
        self.root, self.requests = root, []
        release = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def log_message(self, *args):
                release.requests.append(self.path)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def release(tmp_path):
    root = tmp_path / "release"
    (root / "results").mkdir(parents=True)
    shutil.copyfile(WEIGHTS, root / SO2SAT.weights.path)
    shutil.copyfile(RELEASE / "Acc_32.mat", root / SO2SAT.results.path)
    server = Release(root)
    yield server
    server.server.shutdown()
    server.server.server_close()


def test_pull_downloads_verifies_and_imports(release, tmp_path, monkeypatch):
    monkeypatch.setenv("LCZMAP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(URL_ENV, release.url)
    result, _ = run("models", "pull", "so2sat-sen2lcz")
    assert result.exit_code == 0, result.output
    assert sorted(release.requests) == ["/results/Acc_32.mat", "/results/_32_weights.best.hdf5"]
    card = load_card("so2sat-sen2lcz")
    assert card.source["published_file"] and round(card.metrics["test:so2sat-lcz42"]["oa"], 3) == 0.694
    assert card.source["url"].startswith("https://raw.githubusercontent.com/")  # the release, not the mirror
    assert card.command == "lczmap models pull so2sat-sen2lcz"
    assert "so2sat-sen2lcz" in [c.name for c in available_models()]
    assert sorted(p.name for p in (model_cache() / ".downloads").iterdir()) == [
        "so2sat-sen2lcz-Acc_32.mat", "so2sat-sen2lcz-_32_weights.best.hdf5"]
    assert pull_model("so2sat-sen2lcz").weights_sha256 == card.weights_sha256  # already there: nothing fetched
    pull_model("so2sat-sen2lcz", force=True)  # verified downloads are reused
    assert len(release.requests) == 2


def test_pull_refuses_a_file_with_the_wrong_checksum(release, tmp_path, monkeypatch):
    monkeypatch.setenv("LCZMAP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(URL_ENV, release.url)
    served = release.root / SO2SAT.weights.path
    served.write_bytes(served.read_bytes()[:-100])
    assert_refused(["models", "pull", "so2sat-sen2lcz"], "is not the pinned 2ca98e4adb7d", tmp_path / "cache")
    served.write_bytes(served.read_bytes() + bytes(200))
    assert_refused(["models", "pull", "so2sat-sen2lcz"], "more than the expected 3,324,440 bytes", tmp_path / "cache")


def test_pull_offline_or_unanswered_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("LCZMAP_CACHE", str(tmp_path / "cache"))
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv(URL_ENV, f"http://127.0.0.1:{port}/")  # nothing listens there any more
    assert_refused(["models", "pull", "so2sat-sen2lcz"], "cannot download", tmp_path / "cache")
    assert_refused(["models", "pull", "nope"], "not a published model", tmp_path / "cache")
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        monkeypatch.setenv(URL_ENV, f"http://127.0.0.1:{silent.getsockname()[1]}/")
        with pytest.raises(LczmapError, match="timed out"):
            pull_model("so2sat-sen2lcz", timeout=0.5)


LIST_WITHOUT_KERAS = """
import sys
from click.testing import CliRunner
from lczmap.cli import cli
result = CliRunner().invoke(cli, ["models"])
assert result.exit_code == 0, result.output
print(result.output)
print("heavy:", sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "keras", "jax", "torch"}))
"""


def test_models_lists_networks_and_cached_models_without_keras(imported):
    _, cache = imported
    env = {"LCZMAP_CACHE": str(cache), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", LIST_WITHOUT_KERAS], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "heavy: []" in proc.stdout
    assert "793,348" in proc.stdout and "3,553,122" in proc.stdout
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("so2sat-sen2lcz"))
    assert "sen2lcz" in line and "S2 L1C" in line and "0.694 (test:so2sat-lcz42)" in line
    demo = next(ln for ln in proc.stdout.splitlines() if ln.startswith("msmla18-demo"))
    assert "synthetic" in demo


def test_cards_without_the_new_fields_load_with_defaults(tmp_path):
    demo = load_card("msmla18-demo")
    assert demo.synthetic is True and demo.product_level == "L2A" and demo.trained_on["regions"]
    verify_weights(demo)  # the card's edit leaves its weights' checksum valid
    doc = json.loads((demo.folder / "card.json").read_text())
    for key in ("synthetic", "trained_on", "product_level", "source"):
        doc.pop(key)
    old = tmp_path / "old"
    old.mkdir()
    (old / "card.json").write_text(json.dumps(doc))
    card = load_card(old)
    assert (card.synthetic, card.trained_on, card.product_level, card.source) == (False, {}, "", {})
    for key, value, needle in [("synthetic", "yes", "true or false"), ("product_level", "L3", "must be one of"),
                               ("trained_on", {"regions": "Berlin"}, "list of strings"), ("source", [], "JSON object")]:
        (old / "card.json").write_text(json.dumps({**doc, key: value}))
        with pytest.raises(LczmapError, match=needle):
            load_card(old)
