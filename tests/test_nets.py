"""The seed networks: exact parameter counts, forward passes, weight files, backend portability, GCSConv maths, CLI."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from lczmap.card import ModelCard, write_card
from lczmap.cli import cli
from lczmap.errors import LczmapError
from lczmap.nets import NETWORKS, build
from lczmap.nets.layers import GCSConv

# Small inputs keep the forward passes fast; MSMLA accepts any patch size and band count.
SHAPES = {
    "msmla18": (24, 24, 13),
    "msmla50": (16, 16, 10),
    "df4lcz_s2": (32, 32, 10),
    "df4lcz_gcn": (50, 5),
    "df4lcz": (32, 32, 10),
    "sen2lcz": (16, 16, 10),
}


def random_graphs(rng: np.random.Generator, batch: int, max_nodes: int = 50) -> dict[str, np.ndarray]:
    """Padded graphs with 1..max_nodes real nodes, random symmetric adjacency, garbage in the padding."""
    n = rng.integers(1, max_nodes + 1, batch)
    mask = (np.arange(max_nodes)[None] < n[:, None]).astype(np.float32)
    a = (rng.random((batch, max_nodes, max_nodes)) < 0.3).astype(np.float32)
    a = np.maximum(a, a.transpose(0, 2, 1)) * (1 - np.eye(max_nodes, dtype=np.float32))
    return {"x": rng.random((batch, max_nodes, 5), dtype=np.float32), "a": a, "mask": mask}


def sample_inputs(name: str, shape: tuple[int, ...], batch: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    if name == "df4lcz_gcn":
        return random_graphs(rng, batch, shape[0])
    patches = rng.normal(size=(batch, *shape)).astype(np.float32)
    return {"s2": patches, **random_graphs(rng, batch)} if name == "df4lcz" else patches


def predict(model: keras.Model, inputs) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(inputs, training=False))


def perturb_statistics(model: keras.Model, seed: int) -> None:
    """Non-trivial batch-norm statistics and biases, so a weights round trip or backend switch is really exercised."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if w.name in ("moving_variance", "gamma"):
            w.assign(rng.uniform(0.5, 1.5, w.shape).astype("float32"))
        elif w.name in ("moving_mean", "beta", "bias"):
            w.assign(rng.normal(0, 0.05, w.shape).astype("float32"))


@pytest.fixture(scope="module")
def models() -> dict[str, keras.Model]:
    out = {name: build(name, shape) for name, shape in SHAPES.items()}
    for i, model in enumerate(out.values()):
        perturb_statistics(model, i)
    return out


def test_registry_parameter_counts_match_papers():
    papers = {"msmla18": 181_867, "msmla50": 808_913, "df4lcz_s2": 3_548_049, "sen2lcz": 793_348}
    assert {name: NETWORKS[name].params for name in papers} == papers


@pytest.mark.parametrize("name", list(NETWORKS))
def test_registry_parameter_counts_match_the_built_networks(name):
    """`lczmap models` lists NETWORKS[name].params without Keras: each must be the count of the network as built."""
    assert build(name).count_params() == NETWORKS[name].params


def test_band_count_changes_only_the_input_layers():
    # 3 more bands add weights only to the three multi-scale convs: (25 + 9 + 1) kernels x 16/32/16 filters.
    extra = 3 * (25 * 16 + 9 * 32 + 1 * 16)
    assert build("msmla18", (48, 48, 13)).count_params() == 181_867 + extra


def test_cbam_variants_differ_as_documented():
    released, standard = build("msmla18", (16, 16, 10)), build("msmla18", (16, 16, 10), cbam="standard")
    # Released CBAM: Dense(C/8), Dense(C), extra Dense(C) on the avg branch; standard: one shared MLP, so it
    # lacks the extra C*C + C weights in each of the four CBAMs (C = 64, 16, 32, 64).
    assert released.count_params() - standard.count_params() == sum(c * c + c for c in (64, 16, 32, 64))
    patches = sample_inputs("msmla18", (16, 16, 10))
    np.testing.assert_allclose(predict(standard, patches).sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", list(SHAPES))
def test_forward_pass_gives_probabilities(models, name):
    probs = predict(models[name], sample_inputs(name, SHAPES[name]))
    assert probs.shape == (3, 17)
    assert (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", list(SHAPES))
def test_weights_file_reloads_to_identical_outputs(models, name, tmp_path):
    inputs = sample_inputs(name, SHAPES[name], seed=1)
    path = tmp_path / f"{name}.weights.h5"
    models[name].save_weights(path)
    fresh = build(name, SHAPES[name])
    assert not np.allclose(predict(fresh, inputs), predict(models[name], inputs), atol=1e-6)
    fresh.load_weights(path)
    np.testing.assert_array_equal(predict(fresh, inputs), predict(models[name], inputs))


def test_fusion_is_weighted_average_of_streams(models):
    model = models["df4lcz"]
    inputs = sample_inputs("df4lcz", SHAPES["df4lcz"], seed=2)
    p_s2 = predict(model.get_layer("df4lcz_s2"), inputs["s2"])
    p_gcn = predict(model.get_layer("df4lcz_gcn"), {k: inputs[k] for k in ("x", "a", "mask")})
    np.testing.assert_allclose(predict(model, inputs), 0.6 * p_s2 + 0.4 * p_gcn, rtol=1e-5, atol=1e-7)
    half = build("df4lcz", SHAPES["df4lcz"], alpha=0.5)
    half.set_weights(model.get_weights())
    np.testing.assert_allclose(predict(half, inputs), 0.5 * p_s2 + 0.5 * p_gcn, rtol=1e-5, atol=1e-7)


def numpy_gcs_conv(x, a, w1, w2, b):
    """The formula Z = relu(D^-1/2 A D^-1/2 X W1 + X W2 + b) on one unpadded graph, isolated nodes left unscaled."""
    deg = a.sum(axis=1)
    inv = np.where(deg > 0, 1 / np.sqrt(np.where(deg > 0, deg, 1)), 0)
    return np.maximum(inv[:, None] * a * inv[None, :] @ x @ w1 + x @ w2 + b, 0)


def test_gcs_conv_matches_formula_and_ignores_padding():
    rng = np.random.default_rng(3)
    n, pad, f = 6, 10, 5
    a = np.zeros((n, n), np.float32)
    for i, j in [(0, 1), (1, 2), (2, 3), (3, 0), (0, 4), (1, 3)]:  # node 5 is isolated
        a[i, j] = a[j, i] = 1.0
    x = rng.random((n, f), dtype=np.float32)
    layer = GCSConv(8, activation="relu")
    layer.build([(None, pad, f), (None, pad, pad), (None, pad)])
    layer.bias.assign(rng.normal(0, 0.5, 8).astype("float32"))
    w1, w2, b = (keras.ops.convert_to_numpy(v) for v in (layer.kernel_1, layer.kernel_2, layer.bias))
    expected = numpy_gcs_conv(x, a, w1, w2, b)

    def padded(fill: float) -> list[np.ndarray]:
        xp = np.full((1, pad, f), fill, np.float32)
        ap = np.full((1, pad, pad), fill, np.float32)  # padded rows/columns hold junk edges
        xp[0, :n], ap[0, :n, :n] = x, a
        return [xp, ap, (np.arange(pad) < n).astype(np.float32)[None]]

    for fill in (0.0, 7.0):
        z = keras.ops.convert_to_numpy(layer(padded(fill)))
        np.testing.assert_allclose(z[0, :n], expected, rtol=1e-5, atol=1e-6)
        assert not z[0, n:].any()


def test_gcn_output_ignores_padded_nodes(models):
    model = models["df4lcz_gcn"]
    graphs = sample_inputs("df4lcz_gcn", SHAPES["df4lcz_gcn"], seed=4)
    junk = {k: v.copy() for k, v in graphs.items()}
    pad = graphs["mask"] == 0
    junk["x"][pad] = 5.0
    junk["a"][np.broadcast_to(pad[:, None, :], junk["a"].shape)] = 1.0
    assert pad.any()
    np.testing.assert_allclose(predict(model, junk), predict(model, graphs), rtol=1e-6, atol=1e-7)


JAX_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import keras
    from lczmap.nets import build
    assert keras.backend.backend() == "jax", keras.backend.backend()
    spec = json.loads(sys.argv[1])
    out = {}
    for name, item in spec.items():
        model = build(name, tuple(item["shape"]))
        model.load_weights(item["weights"])
        data = np.load(item["inputs"])
        inputs = {k: data[k] for k in data.files} if len(data.files) > 1 else data[data.files[0]]
        out[name] = model.predict_on_batch(inputs)  # one jit-compiled call, far faster on JAX than eager layers
    np.savez(sys.argv[2], **out)
    """
)


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_same_weights_same_outputs_on_jax(models, tmp_path):
    spec, expected = {}, {}
    for name in ("msmla18", "df4lcz_gcn"):
        inputs = sample_inputs(name, SHAPES[name], seed=5)
        weights, data = tmp_path / f"{name}.weights.h5", tmp_path / f"{name}_inputs.npz"
        models[name].save_weights(weights)
        np.savez(data, **(inputs if isinstance(inputs, dict) else {"patch": inputs}))
        spec[name] = {"shape": SHAPES[name], "weights": str(weights), "inputs": str(data)}
        expected[name] = predict(models[name], inputs)
    result = tmp_path / "jax_outputs.npz"
    # JAX compiles each weight initializer separately; a lower LLVM optimisation level halves that start-up cost
    # without changing what the layers compute.
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_backend_optimization_level=0"}
    proc = subprocess.run([sys.executable, "-c", JAX_SCRIPT, json.dumps(spec), str(result)], env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(result)
    for name, probs in expected.items():
        np.testing.assert_allclose(got[name], probs, rtol=1e-4, atol=1e-5)


def test_build_rejects_bad_requests():
    with pytest.raises(LczmapError, match="unknown"):
        build("resnet9000")
    with pytest.raises(LczmapError, match="input shape"):
        build("msmla18", (48, 48))
    with pytest.raises(LczmapError, match="'depth'"):
        build("msmla18", (48, 48, 10), depth=34)
    with pytest.raises(LczmapError, match="cbam"):
        build("msmla18", (48, 48, 10), cbam="woo")
    with pytest.raises(LczmapError, match="alpha"):
        build("df4lcz", alpha=1.5)


def test_models_command_lists_networks_and_trained_models(tmp_path, monkeypatch):
    folder = tmp_path / "city-msmla18"
    folder.mkdir()
    card = ModelCard(name="city-msmla18", network="msmla18", input_shape=(48, 48, 13), bands=("B02",) * 13,
                     mean=(0.0,) * 13, std=(1.0,) * 13, metrics={"validation": {"oa": 0.8123, "confusion_matrix": [[1]]}})
    write_card(card, folder)
    monkeypatch.setenv("LCZMAP_MODELS", str(tmp_path))
    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 0, result.output
    for name in NETWORKS:
        assert name in result.output
    for count in ("181,867", "808,913", "3,548,049", "793,348"):
        assert count in result.output
    line = next(line for line in result.output.splitlines() if line.startswith("city-msmla18"))
    assert "msmla18" in line and "48" in line and "13" in line and "0.812" in line
    as_json = json.loads(CliRunner().invoke(cli, ["models", "--json"]).output)
    assert {n["name"]: n["params"] for n in as_json["networks"]}["msmla50"] == 808_913
    assert as_json["models"][0]["metrics"] == {"validation": {"oa": pytest.approx(0.8123)}}
