"""`lczmap batch`: pipeline validation, cities sharing a cluster, failures, resume after kill -9, killed workers, docker."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from click.testing import CliRunner

from lczmap.batch import MANIFEST, load_pipeline, run_batch
from lczmap.card import sha256
from lczmap.cli import cli
from lczmap.errors import LczmapError
from lczmap.outputs import output_paths

REPO = Path(__file__).resolve().parents[1]
LCZMAP = Path(sys.executable).parent / "lczmap"
CITIES = ("alpha", "beta", "gamma")


def write_pipeline(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# --- pipeline validation (no cluster needed) -----------------------------------------------------

@pytest.fixture
def default_model(tmp_path, monkeypatch):
    """A card named like the shipped model on $LCZMAP_MODELS, so pipelines without `model:` validate
    whether or not the trained model is installed (these tests never run it)."""
    from lczmap.card import DEFAULT_MODEL, ModelCard, write_card

    folder = tmp_path / "models" / DEFAULT_MODEL
    folder.mkdir(parents=True)
    write_card(ModelCard(name=DEFAULT_MODEL, network="msmla18", input_shape=(48, 48, 1), bands=("B02",),
                         mean=(0.0,), std=(1.0,)), folder)
    monkeypatch.setenv("LCZMAP_MODELS", str(tmp_path / "models"))
    return folder


def test_pipeline_paths_are_relative_to_the_file_and_options_merge(tmp_path):
    from lczmap.card import ModelCard, write_card

    (tmp_path / "models" / "mine").mkdir(parents=True)
    write_card(ModelCard(name="mine", network="msmla18", input_shape=(48, 48, 1), bands=("B02",), mean=(0.0,),
                         std=(1.0,)), tmp_path / "models" / "mine")
    pipe = write_pipeline(tmp_path / "p.yaml", {
        "output_dir": "out", "model": "models/mine", "resolution": 100, "filter": False,
        "cities": [{"name": "a", "config": "cities/a/city.yaml"},
                   {"config": "cities/b/city.yaml", "resolution": 200, "batch_size": 64}],
    })
    p = load_pipeline(pipe)
    root = tmp_path.resolve()
    assert p.output_dir == root / "out"
    a, b = p.cities
    assert (a.name, a.config) == ("a", root / "cities" / "a" / "city.yaml")
    assert b.name == "b"  # defaults to the config's folder name
    assert a.options == {"model": str(root / "models" / "mine"), "resolution": 100, "filter": False}
    assert b.options["resolution"] == 200 and b.options["batch_size"] == 64 and b.options["filter"] is False


@pytest.mark.parametrize("doc,message", [
    ({"output_dir": "o", "cities": [{"name": "a", "config": "a.yaml"}], "worker": 2}, r"unknown keys \['worker'\]"),
    ({"output_dir": "o", "cities": [{"name": "a", "config": "a.yaml", "resolutoin": 50}]}, r"city 1: unknown keys \['resolutoin'\]"),
    ({"output_dir": "o", "cities": [{"name": "a", "config": "a.yaml"}, {"name": "a", "config": "b.yaml"}]}, "city 2: duplicate city name 'a'"),
    ({"output_dir": "o", "cities": [{"name": "a"}]}, "city 1: 'config' .* is missing"),
    ({"output_dir": "o", "cities": []}, "'cities' must be a non-empty list"),
    ({"cities": [{"name": "a", "config": "a.yaml"}]}, "'output_dir' .* is required"),
    ({"output_dir": "o", "batch_size": True, "cities": [{"name": "a", "config": "a.yaml"}]}, "'batch_size' must be an integer, got True"),
    ({"output_dir": "o", "cities": [{"name": "../x", "config": "a.yaml"}]}, "name '../x' must be"),
    ({"output_dir": "o", "model": "no-such-model", "cities": [{"name": "a", "config": "a.yaml"}]},
     "'model: no-such-model': .*no such model"),
])
def test_pipeline_problems_stop_before_anything_is_done(tmp_path, doc, message):
    pipe = write_pipeline(tmp_path / "p.yaml", doc)
    with pytest.raises(LczmapError, match=message):
        load_pipeline(pipe)
    result = CliRunner().invoke(cli, ["batch", str(pipe)])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()  # nothing created


def test_an_unreachable_scheduler_stops_the_run_before_anything_is_written(tmp_path, default_model):
    import dask
    import distributed  # noqa: F401  (loads its config defaults, which leaving dask.config.set must not remove)

    pipe = write_pipeline(tmp_path / "p.yaml", {"output_dir": "o", "cities": [{"name": "a", "config": "a.yaml"}]})
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), \
            pytest.raises(LczmapError, match="--scheduler tcp://127.0.0.1:1: cannot connect"):
        run_batch(load_pipeline(pipe), scheduler="tcp://127.0.0.1:1")
    assert not (tmp_path / "o").exists()


def test_a_finished_city_is_skipped_only_while_its_map_and_options_are_unchanged(tmp_path, default_model):
    from lczmap.batch import is_finished

    pipe = write_pipeline(tmp_path / "p.yaml", {"output_dir": "o", "cities": [{"name": "a", "config": "a.yaml"}]})
    job = load_pipeline(pipe).cities[0]
    (tmp_path / "o").mkdir()
    tif = tmp_path / "o" / "a.tif"
    tif.write_bytes(b"a finished map")
    entry = {"status": "done", "sha256": sha256(tif), "options": job.fingerprint()}
    assert is_finished(job, entry, tmp_path / "o") and is_finished(job, {**entry, "status": "skipped"}, tmp_path / "o")
    assert not is_finished(job, {**entry, "status": "failed"}, tmp_path / "o")
    assert not is_finished(job, {**entry, "options": {**job.fingerprint(), "resolution": 200}}, tmp_path / "o")
    assert not is_finished(job, {**entry, "options": {**job.fingerprint(), "weights_sha256": "retrained"}}, tmp_path / "o")
    tif.write_bytes(b"a damaged map")
    assert not is_finished(job, entry, tmp_path / "o")
    tif.unlink()
    assert not is_finished(job, entry, tmp_path / "o")


def test_shipped_pipeline_examples_are_valid(default_model):
    demo = load_pipeline(REPO / "pipelines" / "demo.yaml")
    example = load_pipeline(REPO / "pipelines" / "batch-example.yaml")
    assert len(demo.cities) == 1 and len(example.cities) == 3


# --- docker --------------------------------------------------------------------------------------

def test_compose_runs_a_scheduler_two_workers_and_a_batch_client():
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"scheduler", "worker", "client"}
    dask_commands = {ep.name for ep in entry_points(group="dask_cli")}
    assert services["scheduler"]["entrypoint"] == ["dask"] and services["scheduler"]["command"][0] in dask_commands
    worker = services["worker"]
    assert worker["command"][:2] == ["worker", "tcp://scheduler:8786"] and "worker" in dask_commands
    assert worker["deploy"]["replicas"] == 2
    client = services["client"]
    assert client["entrypoint"] == ["lczmap"] and client["command"][-2:] == ["--scheduler", "tcp://scheduler:8786"]
    for service in services.values():  # same image and the same data mount everywhere: workers read the inputs
        assert service["image"] == "lczmap:latest" and any(v.endswith(":/data") for v in service["volumes"])
        assert (REPO / "docker" / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    # the client's arguments are ones `lczmap batch` accepts: it gets as far as looking for the pipeline file
    result = CliRunner().invoke(cli, client["command"])
    assert result.exit_code == 1 and "/data/pipeline.yaml: pipeline file does not exist" in result.output


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles_lint_clean_and_install_the_project(dockerfile):
    text = (REPO / "docker" / dockerfile).read_text()
    assert "FROM python:3.11-slim" in text and 'ENTRYPOINT ["lczmap"]' in text
    if dockerfile.endswith("gpu"):
        assert 'pip install --no-cache-dir ".[gpu]"' in text and "KERAS_BACKEND=jax" in text
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(REPO / "docker" / dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- many cities on one cluster ------------------------------------------------------------------

@pytest.fixture(scope="module")
def client():
    """One LocalCluster of two single-threaded worker processes, shared by this module's runs."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, client):
    """Three small demo cities and a model folder with random weights (the shipped model is trained later)."""
    import keras

    from lczmap.card import ModelCard, write_card
    from lczmap.demo import generate
    from lczmap.nets import build
    from lczmap.stage import BANDS

    root = tmp_path_factory.mktemp("batch")
    # generated on the cluster's two workers, in parallel
    cities = client.map(generate, [root / "cities" / n for n in CITIES], range(1, len(CITIES) + 1), size_km=2, pure=False)
    keras.utils.set_random_seed(0)
    (root / "model").mkdir()
    build("msmla18", (48, 48, len(BANDS))).save_weights(str(root / "model" / "model.weights.h5"))
    # Rough scales of the bands (reflectance, fractions, metres, land-cover codes) so the patches vary.
    std = (0.1,) * 10 + (0.3, 10.0, 30.0)
    write_card(ModelCard(name="random", network="msmla18", input_shape=(48, 48, len(BANDS)), bands=BANDS,
                         mean=(0.0,) * len(BANDS), std=std), root / "model")
    client.gather(cities)
    return root


def pipeline_for(workspace: Path, out: str, names, extra=()) -> Path:
    cities = [{"name": n, "config": f"cities/{n}/city.yaml"} for n in names] + list(extra)
    return write_pipeline(workspace / f"{out}.yaml", {"output_dir": out, "model": "model", "cities": cities})


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def done_cities(out: Path) -> set[str]:
    try:
        return {n for n, e in json.loads((out / MANIFEST).read_text())["cities"].items() if e["status"] == "done"}
    except (FileNotFoundError, json.JSONDecodeError):
        return set()


@pytest.fixture(scope="module")
def killed_and_resumed(workspace, client):
    """`lczmap batch` on 3 cities + a broken one: SIGKILLed once the first city is done, then run again."""
    broken = {"name": "broken", "config": "cities/nowhere/city.yaml"}
    pipe = pipeline_for(workspace, "out", CITIES, [broken])
    out = workspace / "out"
    cmd = [str(LCZMAP), "batch", str(pipe), "--scheduler", client.scheduler.address]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: done_cities(out) or first.poll() is not None, 120, "the first city done in manifest.json")
        assert first.poll() is None, f"the first run ended by itself: {first.communicate()[1][-2000:]}"
    finally:
        first.kill()  # SIGKILL: no clean-up of any kind
        first.communicate()
    done_at_kill = done_cities(out)
    kept = {name: os.stat(out / f"{name}.tif") for name in done_at_kill}
    # Every map at a final path after the kill is a complete GeoTIFF (a write cut short leaves only a temporary).
    for tif in out.glob("*.tif"):
        with rasterio.open(tif) as ds:
            ds.read()
    (out / f".{CITIES[-1]}.tif.999999.tmp").write_bytes(b"half a GeoTIFF, as a killed write leaves it")
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    return {"out": out, "done_at_kill": done_at_kill, "kept": kept, "second": second,
            "manifest": json.loads((out / MANIFEST).read_text())}


@pytest.mark.slow
def test_batch_maps_every_city_and_names_the_broken_one(killed_and_resumed):
    run, out = killed_and_resumed, killed_and_resumed["out"]
    assert run["second"].returncode == 1
    assert "broken" in run["second"].stderr and "cities/nowhere/city.yaml" in run["second"].stderr
    cities = run["manifest"]["cities"]
    assert cities["broken"]["status"] == "failed" and "does not exist" in cities["broken"]["error"]
    for name in CITIES:
        assert cities[name]["status"] in ("done", "skipped")
        tif = out / f"{name}.tif"
        assert cities[name]["sha256"] == sha256(tif)
        # the LCZ Generator's layout (lcz, lczFilter, lczProbability), in a file of its own beside a one-band map
        three = output_paths(tif).get("lcz3", tif)
        with rasterio.open(three) as ds:
            assert ds.count == 3 and ds.descriptions == ("lcz", "lczFilter", "lczProbability")
            lcz = ds.read(1)
        assert ((lcz >= 1) & (lcz <= 17)).mean() > 0.5 and set(np.unique(lcz)) <= set(range(18))
        assert (out / f"{name}.summary.json").is_file() and (out / f"{name}.png").is_file()
    assert not list(out.glob(".*.tmp"))  # the stale temporary file is gone


@pytest.mark.slow
def test_a_killed_run_resumes_without_redoing_finished_cities(killed_and_resumed):
    run, out = killed_and_resumed, killed_and_resumed["out"]
    cities = run["manifest"]["cities"]
    assert 1 <= len(run["done_at_kill"]) < len(CITIES), "the first run ended before it could be killed"
    for name, before in run["kept"].items():  # not recomputed: the very same file, untouched
        after = os.stat(out / f"{name}.tif")
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        assert cities[name]["status"] == "skipped"
    # The others are mapped again, or skipped where the killed client's task went on on the cluster and committed
    # the city with its record (lczmap.batch.map_city) before the second run looked.
    assert all(cities[n]["status"] in ("done", "skipped") for n in set(CITIES) - run["done_at_kill"])


@pytest.mark.slow
def test_a_killed_worker_does_not_lose_the_run(workspace, client, killed_and_resumed):
    """SIGKILL the worker running a city's block: Dask reruns it elsewhere and the map is the same."""
    pids = client.run(os.getpid)
    killed = []

    def kill_a_busy_worker():
        busy = wait_for(lambda: [w for w, tasks in client.processing().items() if tasks and w in pids], 60,
                        "a block task in flight")
        os.kill(pids[busy[0]], signal.SIGKILL)
        killed.append(busy[0])

    killer = threading.Thread(target=kill_a_busy_worker)
    killer.start()
    manifest = run_batch(load_pipeline(pipeline_for(workspace, "out-kill", ["alpha"])), client=client)
    killer.join()
    assert killed, "no worker was killed"
    assert manifest["cities"]["alpha"]["status"] == "done"
    with rasterio.open(workspace / "out-kill" / "alpha.tif") as got, \
            rasterio.open(killed_and_resumed["out"] / "alpha.tif") as want:
        np.testing.assert_array_equal(got.read(), want.read())


def test_a_region_sized_city_is_submitted_as_tiles_and_mosaicked_by_a_worker(workspace, client, monkeypatch):
    """A city wider than 400 km goes to the cluster as one task per tile plus one for its EPSG:4326 mosaic.

    The demo city is small, so the width test is switched to "region" for this run (the tiling itself is real).
    """
    import lczmap.region

    monkeypatch.setattr(lczmap.region, "needs_region", lambda aoi, tile_km=None: True)
    manifest = run_batch(load_pipeline(pipeline_for(workspace, "out-region", ["beta"])), client=client)
    entry = manifest["cities"]["beta"]
    assert entry["status"] == "done", entry
    tif = workspace / "out-region" / "beta.tif"
    assert entry["sha256"] == sha256(tif) and (workspace / "out-region" / "beta.tiles").is_dir()
    summary = json.loads(tif.with_suffix(".summary.json").read_text())  # inputs checked on the worker, as a city's
    assert summary["input_warnings"] == [] and "model_synthetic" in summary
    assert set(summary["seconds"]) == {"plan", "tiles", "write", "total"} and summary["seconds"]["tiles"] > 0
    with rasterio.open(tif) as ds:  # a city's layout: the one-band map, the LCZ Generator's bands beside it
        assert ds.crs.to_epsg() == 4326 and ds.descriptions == ("lcz_filtered",)
        assert (ds.read(1) != 0).mean() > 0.3
    with rasterio.open(tif.with_name("beta_lcz3.tif")) as ds:
        assert ds.descriptions == ("lcz", "lczFilter", "lczProbability")


def test_gpu_workers_each_see_only_their_own_gpu():
    """--gpus: one worker process per listed device with CUDA_VISIBLE_DEVICES set (checked without GPUs)."""
    from lczmap.cluster import dask_client

    with dask_client(gpus=["0", "2"]) as c:
        seen = c.run(lambda: (os.environ.get("CUDA_VISIBLE_DEVICES"), os.getpid()))
    assert sorted(device for device, _ in seen.values()) == ["0", "2"]
    assert len({pid for _, pid in seen.values()}) == 2  # separate processes


@pytest.mark.parametrize("args,message", [
    (["--workers", "2", "--scheduler", "tcp://h:8786"], "exclude each other"),
    (["--gpus", "0,x"], "--gpus 0,x: expected CUDA device numbers"),
])
def test_conflicting_cluster_options_are_refused(tmp_path, args, message):
    pipe = write_pipeline(tmp_path / "p.yaml", {"output_dir": "o", "cities": [{"name": "a", "config": "a.yaml"}]})
    result = CliRunner().invoke(cli, ["batch", str(pipe), *args])
    assert result.exit_code == 1 and message in result.output
    assert not (tmp_path / "o").exists()
