"""Hostile files, wrong values and interrupted runs (issue: hardening).

One parametrised matrix of bad inputs over every command (predict, stage, train, evaluate, batch,
demo-data), each asserting: exit code 1, exactly one `Error:` line naming the file or option, no
traceback, nothing new at any output path, inputs unchanged. Then: no code runs from a crafted split
file, card or weights file; property-based AOI and city.yaml documents only ever give a result or an
LczmapError; kill tests for replacing a staged store and for predict's final renames; output locks.
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lczmap.card import load_card, sha256
from lczmap.cli import cli
from lczmap.errors import LczmapError, OutputBusyError

PYTHON = sys.executable
REPO = Path(__file__).resolve().parent.parent


class Payload:
    """Unpickling this runs `touch <marker>`: what a crafted pickle does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@dataclass
class World:
    city: Path  # the demo city's folder (inputs)
    bad: Path  # crafted inputs
    pwned: Path  # created if any crafted file ever runs code


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _card_variant(bad: Path, name: str, **changes) -> Path:
    """A copy of the shipped model's folder with card.json changed (None removes a key)."""
    src = load_card()
    folder = bad / "models" / name
    folder.mkdir(parents=True)
    shutil.copy(src.weights_path, folder / "model.weights.h5")
    doc = json.loads((src.folder / "card.json").read_text())
    for k, v in changes.items():
        if v is None:
            doc.pop(k, None)
        else:
            doc[k] = v
    (folder / "card.json").write_text(json.dumps(doc))
    return folder


def _ges2(folder: Path, split_bytes: bytes) -> Path:
    img = folder / "sen2_img_patches"
    img.mkdir(parents=True)
    for i in range(2):
        np.savez(img / f"sen2_image_{i}.npz", image=np.zeros((32, 32, 10), np.float32), label=np.array([3]))
    _write(folder / "patches_split" / "partition_random.npz", split_bytes)
    return folder


def _safe_copy(city: Path, dest: Path) -> Path:
    safe = next(city.glob("*.SAFE"))
    shutil.copytree(safe, dest / safe.name)
    return dest / safe.name


def _city_yaml(city: Path, path: Path, **changes) -> Path:
    doc = yaml.safe_load((city / "city.yaml").read_text())
    doc = {k: (str(city / v) if isinstance(v, str) and (city / v).exists() else v) for k, v in doc.items()}
    doc.update(changes)
    return _write(path, yaml.safe_dump(doc))


@pytest.fixture(scope="module")
def world(demo_city, tmp_path_factory) -> World:
    bad = tmp_path_factory.mktemp("bad")
    pwned = bad / "PWNED"
    w = World(demo_city, bad, pwned)
    evil_split = pickle.dumps({"train": Payload(pwned), "validation": [0], "test": [1]})
    _ges2(bad / "ges2_evil", evil_split)
    _ges2(bad / "ges2_garbage", b"\x80\x04not a pickle at all")
    _ges2(bad / "ges2_list", pickle.dumps([1, 2, 3]))
    import h5py

    with h5py.File(bad / "group.h5", "w") as f:
        f.create_group("sen2")
        f.create_dataset("label", data=np.eye(17)[:2])
    _write(bad / "random.h5", os.urandom(4096))
    # model folders
    outside = bad / "models" / "outside.weights.h5"
    outside.parent.mkdir(parents=True)
    shutil.copy(load_card().weights_path, outside)
    _card_variant(bad, "dotdot", weights_file="../outside.weights.h5")
    _card_variant(bad, "absolute", weights_file="/dev/zero")
    link = _card_variant(bad, "symlink_out", weights_file="link.weights.h5")
    (link / "link.weights.h5").symlink_to(outside)
    dev = _card_variant(bad, "device", weights_file="zero.weights.h5")
    (dev / "zero.weights.h5").symlink_to("/dev/zero")
    _card_variant(bad, "no_sha", weights_sha256="")
    _card_variant(bad, "sha_missing", weights_sha256=None)
    _card_variant(bad, "wrong_sha", weights_sha256="0" * 64)
    _card_variant(bad, "std_zero", std=[0.0] * 13)
    _card_variant(bad, "short_mean", mean=[0.0] * 3)
    _card_variant(bad, "evil_option", network_options={"__import__": "os"})
    _card_variant(bad, "bad_network", network="os.system")
    notjson = _card_variant(bad, "not_json")
    (notjson / "card.json").write_text("{broken")
    listcard = _card_variant(bad, "list_card")
    (listcard / "card.json").write_text("[1, 2]")
    evil_weights = _card_variant(bad, "pickle_weights")
    (evil_weights / "model.weights.h5").write_bytes(pickle.dumps(Payload(pwned)))
    doc = json.loads((evil_weights / "card.json").read_text())
    doc["weights_sha256"] = sha256(evil_weights / "model.weights.h5")
    (evil_weights / "card.json").write_text(json.dumps(doc))
    # AOIs and city.yaml
    _write(bad / "aoi_metres.geojson", json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {},
           "geometry": {"type": "Polygon", "coordinates": [[[500000, 4e6], [501000, 4e6], [501000, 4.001e6], [500000, 4e6]]]}}]}))
    _write(bad / "aoi_point.geojson", json.dumps({"type": "Point", "coordinates": [127.0, 37.5]}))
    _write(bad / "aoi_empty.geojson", json.dumps({"type": "FeatureCollection", "features": []}))
    (bad / "aoi_folder").mkdir()
    _city_yaml(demo_city, bad / "yaml_aoi_int" / "city.yaml", aoi=123)
    _city_yaml(demo_city, bad / "yaml_dsm_true" / "city.yaml", dsm=True)
    _city_yaml(demo_city, bad / "yaml_scheme_5" / "city.yaml", landcover_scheme=5)
    _city_yaml(demo_city, bad / "yaml_osm_online_str" / "city.yaml", osm_online="false")
    _city_yaml(demo_city, bad / "yaml_s2_empty" / "city.yaml", sentinel2=[])
    _city_yaml(demo_city, bad / "yaml_unknown" / "city.yaml", sentinal2="x.SAFE")
    _write(bad / "yaml_binary" / "city.yaml", bytes(range(256)) * 8)
    _write(bad / "yaml_list" / "city.yaml", "- a\n- b\n")
    # Sentinel-2 products with broken metadata or a band without a CRS
    for name, old, new in [("mtd_offset", "<BOA_ADD_OFFSET band_id=\"0\">-1000", "<BOA_ADD_OFFSET band_id=\"0\">minus-1000"),
                           ("mtd_bandid", "bandId=\"1\"", "bandId=\"one\"")]:
        safe = _safe_copy(demo_city, bad / name)
        mtd = safe / "MTD_MSIL2A.xml"
        text = mtd.read_text()
        assert old in text, (name, old)
        mtd.write_text(text.replace(old, new, 1))
    safe = _safe_copy(demo_city, bad / "jp2_nocrs")
    band = next(safe.rglob("*_B04_10m.jp2"))
    with rasterio.open(band) as src:
        data, profile = src.read(), src.profile
    band.unlink()
    with rasterio.open(band, "w", driver="JP2OpenJPEG", width=profile["width"], height=profile["height"], count=1,
                       dtype=profile["dtype"]) as dst:
        dst.write(data)
    # a DSM whose header is fine and whose pixels are cut off: the error comes from inside a Dask task
    dsm = (demo_city / "dsm.tif").read_bytes()
    _write(bad / "dsm_truncated.tif", dsm[: len(dsm) // 2])
    # a DSM whose header reads and whose compressed tiles are garbage: the error comes from inside a Dask task
    with rasterio.open(demo_city / "dsm.tif") as src:
        profile, data = src.profile, src.read()
    corrupt = bad / "dsm_corrupt.tif"
    with rasterio.open(corrupt, "w", **{**profile, "tiled": True, "blockxsize": 64, "blockysize": 64, "compress": "deflate"}) as dst:
        dst.write(data)
    with rasterio.open(corrupt) as src:
        tiles = [(int(src.get_tag_item(f"BLOCK_OFFSET_{c}_{r}", "TIFF", bidx=1)), int(src.get_tag_item(f"BLOCK_SIZE_{c}_{r}", "TIFF", bidx=1)))
                 for (r, c), _ in src.block_windows(1)]
    raw = bytearray(corrupt.read_bytes())
    for offset, size in tiles:
        raw[offset : offset + size] = b"\xff" * size
    corrupt.write_bytes(bytes(raw))
    # pipelines
    good_city = str(demo_city / "city.yaml")
    for name, extra in [("filter_str", {"filter": "yes"}), ("resolution_inf", {"resolution": float("inf")}),
                        ("crs_vertical", {"crs": "EPSG:5773"}), ("batch_str", {"batch_size": "8"}),
                        ("threshold_2", {"nodata_threshold": 2}), ("model_dotdot", {"model": str(bad / "models" / "dotdot")}),
                        ("resolution_15", {"resolution": 15})]:
        _write(bad / "pipes" / f"{name}.yaml", yaml.safe_dump({"output_dir": "OUT", "cities": [{"name": "a", "config": good_city}], **extra}))
    _write(bad / "pipes" / "binary.yaml", os.urandom(2048))
    _write(bad / "pipes" / "locked.yaml", yaml.safe_dump({"output_dir": "LOCKED", "cities": [{"name": "a", "config": good_city}]}))
    (bad / "pipes" / "LOCKED").mkdir()
    return w


def _snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every file (not folder: their times change with the lock files the test itself makes) with size and time."""
    return {str(p): (p.lstat().st_size, p.lstat().st_mtime_ns) for f in folders for p in f.rglob("*")
            if not p.is_dir() and not p.name.endswith(".lock")}


# Each case: (command line, with {city}, {bad}, {out} placeholders; the text the Error: line must contain).
CASES: dict[str, tuple[str, str]] = {
    # 1. no code from a data file
    "train-evil-split": ("train --data {bad}/ges2_evil --out {out}/model --epochs 1", "partition_random.npz"),
    "train-garbage-split": ("train --data {bad}/ges2_garbage --out {out}/model", "partition_random.npz"),
    "train-list-split": ("train --data {bad}/ges2_list --out {out}/model", "partition_random.npz"),
    "evaluate-evil-split": ("evaluate --model msmla18-demo --data {bad}/ges2_evil --out {out}/e.json", "partition_random.npz"),
    "predict-card-dotdot": ("predict --config {city}/city.yaml --model {bad}/models/dotdot --out {out}/lcz.tif", "weights_file"),
    "predict-card-absolute": ("predict --config {city}/city.yaml --model {bad}/models/absolute --out {out}/lcz.tif", "weights_file"),
    "predict-card-symlink-out": ("predict --config {city}/city.yaml --model {bad}/models/symlink_out --out {out}/lcz.tif", "out of the model folder"),
    "predict-card-device": ("predict --config {city}/city.yaml --model {bad}/models/device --out {out}/lcz.tif", "zero.weights.h5"),
    "predict-card-no-sha": ("predict --config {city}/city.yaml --model {bad}/models/no_sha --out {out}/lcz.tif", "weights_sha256"),
    "predict-card-sha-missing": ("predict --config {city}/city.yaml --model {bad}/models/sha_missing --out {out}/lcz.tif", "weights_sha256"),
    "predict-card-wrong-sha": ("predict --config {city}/city.yaml --model {bad}/models/wrong_sha --out {out}/lcz.tif", "checksum"),
    "predict-card-std-zero": ("predict --config {city}/city.yaml --model {bad}/models/std_zero --out {out}/lcz.tif", "std"),
    "predict-card-short-mean": ("predict --config {city}/city.yaml --model {bad}/models/short_mean --out {out}/lcz.tif", "mean"),
    "predict-card-evil-option": ("predict --config {city}/city.yaml --model {bad}/models/evil_option --out {out}/lcz.tif", "__import__"),
    "predict-card-bad-network": ("predict --config {city}/city.yaml --model {bad}/models/bad_network --out {out}/lcz.tif", "network"),
    "predict-card-not-json": ("predict --config {city}/city.yaml --model {bad}/models/not_json --out {out}/lcz.tif", "card.json"),
    "predict-card-list": ("predict --config {city}/city.yaml --model {bad}/models/list_card --out {out}/lcz.tif", "card.json"),
    "predict-pickle-weights": ("predict --config {city}/city.yaml --model {bad}/models/pickle_weights --out {out}/lcz.tif", "model.weights.h5"),
    "evaluate-card-device": ("evaluate --model {bad}/models/device --data {bad}/group.h5 --out {out}/e.json", "zero.weights.h5"),
    # 2. one error boundary: library failures name the input
    "stage-aoi-folder": ("stage --aoi {bad}/aoi_folder --out {out}/s.zarr", "aoi_folder"),
    "stage-aoi-metres": ("stage --aoi {bad}/aoi_metres.geojson --out {out}/s.zarr", "aoi_metres.geojson"),
    "stage-aoi-point": ("stage --aoi {bad}/aoi_point.geojson --out {out}/s.zarr", "aoi_point.geojson"),
    "stage-aoi-empty": ("stage --aoi {bad}/aoi_empty.geojson --out {out}/s.zarr", "aoi_empty.geojson"),
    "predict-aoi-metres": ("predict --config {city}/city.yaml --aoi {bad}/aoi_metres.geojson --out {out}/lcz.tif", "aoi_metres.geojson"),
    "stage-mtd-offset": ("stage --config {city}/city.yaml --s2 {bad}/mtd_offset/{safe} --out {out}/s.zarr", "MTD_MSIL2A.xml"),
    "stage-mtd-bandid": ("stage --config {city}/city.yaml --s2 {bad}/mtd_bandid/{safe} --out {out}/s.zarr", "MTD_MSIL2A.xml"),
    "stage-jp2-no-crs": ("stage --config {city}/city.yaml --s2 {bad}/jp2_nocrs/{safe} --out {out}/s.zarr", "B04"),
    "stage-dsm-truncated": ("stage --config {city}/city.yaml --dsm {bad}/dsm_truncated.tif --out {out}/s.tif", "dsm_truncated.tif"),
    "stage-dsm-corrupt-tiles": ("stage --config {city}/city.yaml --dsm {bad}/dsm_corrupt.tif --out {out}/s.zarr", "dsm_corrupt.tif"),
    "predict-dsm-corrupt-tiles": ("predict --config {city}/city.yaml --dsm {bad}/dsm_corrupt.tif --out {out}/lcz.tif", "dsm_corrupt.tif"),
    "stage-yaml-aoi-int": ("stage --config {bad}/yaml_aoi_int/city.yaml --out {out}/s.zarr", "'aoi'"),
    "stage-yaml-dsm-true": ("stage --config {bad}/yaml_dsm_true/city.yaml --out {out}/s.zarr", "'dsm'"),
    "stage-yaml-scheme-5": ("stage --config {bad}/yaml_scheme_5/city.yaml --out {out}/s.zarr", "'landcover_scheme'"),
    "stage-yaml-s2-empty": ("stage --config {bad}/yaml_s2_empty/city.yaml --out {out}/s.zarr", "'sentinel2'"),
    "stage-yaml-unknown": ("stage --config {bad}/yaml_unknown/city.yaml --out {out}/s.zarr", "sentinal2"),
    "stage-yaml-binary": ("stage --config {bad}/yaml_binary/city.yaml --out {out}/s.zarr", "city.yaml"),
    "stage-yaml-list": ("stage --config {bad}/yaml_list/city.yaml --out {out}/s.zarr", "city.yaml"),
    "predict-yaml-binary": ("predict --config {bad}/yaml_binary/city.yaml --out {out}/lcz.tif", "city.yaml"),
    "train-h5-group": ("train --data {bad}/group.h5 --out {out}/model", "group.h5"),
    "train-h5-random": ("train --data {bad}/random.h5 --out {out}/model", "random.h5"),
    "evaluate-h5-group": ("evaluate --model msmla18-demo --data {bad}/group.h5 --out {out}/e.json", "group.h5"),
    "evaluate-map-folder": ("evaluate --map {bad}/aoi_folder --reference {city}/reference.geojson --out {out}/e.json", "--map"),
    "predict-resolution-inf": ("predict --config {city}/city.yaml --resolution inf --out {out}/lcz.tif", "--resolution inf"),
    "predict-resolution-nan": ("predict --config {city}/city.yaml --resolution nan --out {out}/lcz.tif", "--resolution nan"),
    "stage-resolution-negative": ("stage --config {city}/city.yaml --resolution -100 --out {out}/s.zarr", "--resolution -100"),
    "stage-resolution-15": ("stage --config {city}/city.yaml --resolution 15 --out {out}/s.zarr", "--resolution 15"),
    "stage-resolution-word": ("stage --config {city}/city.yaml --resolution abc --out {out}/s.zarr", "--resolution abc"),
    "predict-scheduler-malformed": ("predict --config {city}/city.yaml --scheduler host:port:x --out {out}/lcz.tif", "--scheduler"),
    "predict-scheduler-port": ("predict --config {city}/city.yaml --scheduler tcp://h:99999 --out {out}/lcz.tif", "--scheduler"),
    "batch-scheduler-malformed": ("batch {bad}/pipes/filter_str.yaml --scheduler 'tcp://a b'", "--scheduler"),
    "demo-size-inf": ("demo-data {out}/demo --size-km inf", "--size-km"),
    "demo-size-nan": ("demo-data {out}/demo --size-km nan", "--size-km"),
    "demo-seed-negative": ("demo-data {out}/demo --seed -1", "--seed"),
    "demo-folder-is-file": ("demo-data {city}/city.yaml", "city.yaml"),
    "batch-binary": ("batch {bad}/pipes/binary.yaml", "binary.yaml"),
    "batch-resolution-inf": ("batch {bad}/pipes/resolution_inf.yaml", "'resolution'"),
    "batch-resolution-15": ("batch {bad}/pipes/resolution_15.yaml", "'resolution'"),
    "batch-batch-size-str": ("batch {bad}/pipes/batch_str.yaml", "'batch_size'"),
    "batch-threshold-2": ("batch {bad}/pipes/threshold_2.yaml", "'nodata_threshold'"),
    "batch-model-dotdot": ("batch {bad}/pipes/model_dotdot.yaml", "weights_file"),
    # 3. wrong values refused, never mapped or guessed
    "predict-crs-vertical": ("predict --config {city}/city.yaml --crs EPSG:5773 --out {out}/lcz.tif", "--crs EPSG:5773"),
    "predict-crs-compound": ("predict --config {city}/city.yaml --crs EPSG:4326+5773 --out {out}/lcz.tif", "--crs"),
    "predict-crs-geocentric": ("predict --config {city}/city.yaml --crs EPSG:4978 --out {out}/lcz.tif", "--crs EPSG:4978"),
    "predict-crs-feet": ("predict --config {city}/city.yaml --crs EPSG:2263 --out {out}/lcz.tif", "--crs EPSG:2263"),
    "predict-crs-engineering": ("predict --config {city}/city.yaml --crs 'ENGCRS[\"local\",EDATUM[\"x\"],CS[Cartesian,2],"
                                "AXIS[\"x\",east,LENGTHUNIT[\"metre\",1]],AXIS[\"y\",north,LENGTHUNIT[\"metre\",1]]]' --out {out}/lcz.tif", "--crs"),
    "predict-crs-unknown": ("predict --config {city}/city.yaml --crs EPSG:999999 --out {out}/lcz.tif", "--crs"),
    "batch-crs-vertical": ("batch {bad}/pipes/crs_vertical.yaml", "'crs'"),
    "predict-out-is-input": ("predict --config {city}/city.yaml --out {city}/dsm.tif", "dsm"),
    "predict-out-links-to-input": ("predict --config {city}/city.yaml --out {out}/link.tif", "dsm"),
    "predict-out-inside-safe": ("predict --config {city}/city.yaml --out {city}/{safe}/lcz.tif", "sentinel2"),
    "predict-out-truth": ("predict --config {city}/city.yaml --out {city}/truth_lcz.tif", "truth"),
    "stage-out-is-input": ("stage --config {city}/city.yaml --out {city}/dsm.tif", "dsm"),
    "stage-out-links-to-input": ("stage --config {city}/city.yaml --out {out}/link.tif", "dsm"),
    "predict-yaml-osm-online-str": ("predict --config {bad}/yaml_osm_online_str/city.yaml --out {out}/lcz.tif", "'osm_online'"),
    "batch-filter-str": ("batch {bad}/pipes/filter_str.yaml", "'filter'"),
    "train-network-unknown": ("train --data {bad}/group.h5 --network os.system --out {out}/model", "--network os.system"),
    "evaluate-band-out-of-range": ("evaluate --map {city}/truth_lcz.tif --reference {city}/reference.geojson --band 9 --out {out}/e.json", "--band 9"),
    "evaluate-split-unknown": ("evaluate --model msmla18-demo --data {bad}/ges2_evil --split everything --out {out}/e.json", "everything"),
    "demo-size-too-big": ("demo-data {out}/demo --size-km 100", "--size-km"),
    # 4. concurrent runs
    "stage-output-locked": ("stage --config {city}/city.yaml --out {out}/s.zarr", "being written by process 4242"),
    "predict-output-locked": ("predict --config {city}/city.yaml --out {out}/lcz.tif", "being written by process 4242"),
    "batch-output-locked": ("batch {bad}/pipes/locked.yaml", "being written by process 4242"),
}
LOCKED = {"stage-output-locked": "{out}/s.zarr", "predict-output-locked": "{out}/lcz.tif",
          "batch-output-locked": "{bad}/pipes/LOCKED/manifest.json"}


def _hold_lock(path: Path, pid: str = "4242") -> int:
    """Take `path`'s output lock the way another lczmap process would (a separate open file, flock)."""
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, pid.encode())
    return fd


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_matrix(case, world, tmp_path):
    import shlex

    line, needle = CASES[case]
    out = tmp_path / "out"
    out.mkdir()
    if case in ("predict-out-links-to-input", "stage-out-links-to-input"):
        (out / "link.tif").symlink_to(world.city / "dsm.tif")
    before_out = sorted(p.name for p in out.iterdir())
    locked = Path(LOCKED[case].format(out=out, bad=world.bad)) if case in LOCKED else None
    lock_fd = _hold_lock(locked) if locked else None
    safe = next(world.city.glob("*.SAFE")).name
    args = shlex.split(line.format(city=world.city, bad=world.bad, out=out, safe=safe))
    before_in = _snapshot(world.city, world.bad)
    try:
        result = CliRunner().invoke(cli, args)
    finally:
        if lock_fd is not None:
            os.close(lock_fd)
            locked.with_name(f".{locked.name}.lock").unlink()
    text = result.output
    errors = [ln for ln in text.splitlines() if ln.startswith("Error:")]
    assert result.exit_code == 1, text
    assert "Traceback" not in text and len(errors) == 1, text
    assert needle in errors[0], errors[0]
    assert sorted(p.name for p in out.iterdir()) == before_out  # nothing new at any output path
    assert _snapshot(world.city, world.bad) == before_in  # inputs unchanged
    assert not world.pwned.exists()
    assert not (world.bad / "pipes" / "OUT").exists() and list((world.bad / "pipes" / "LOCKED").iterdir()) == []


def test_verbose_shows_the_traceback(world, tmp_path):
    result = CliRunner().invoke(cli, ["-v", "stage", "--config", str(world.city / "city.yaml"), "--dsm",
                                      str(world.bad / "dsm_corrupt.tif"), "--out", str(tmp_path / "s.tif")])
    assert result.exit_code == 1 and "Traceback" in result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: ")


# --- no code from a data file ----------------------------------------------------------------------

def test_no_code_runs_from_a_crafted_split_card_or_weights_file(world):
    from lczmap.card import load_model
    from lczmap.train.datasets import Ges2Source, load_split_file

    with pytest.raises(LczmapError, match="posix.system|os.system"):
        load_split_file(world.bad / "ges2_evil" / "patches_split" / "partition_random.npz")
    with pytest.raises(LczmapError):
        Ges2Source(world.bad / "ges2_evil")
    with pytest.raises(LczmapError, match="network option '__import__'"):
        load_card(world.bad / "models" / "evil_option")
    with pytest.raises(LczmapError):
        load_model(load_card(world.bad / "models" / "pickle_weights"))
    assert not world.pwned.exists()
    # the released format still reads: a pickled dict of integer arrays (any protocol)
    for protocol in (2, 4, 5):
        path = world.bad / f"split{protocol}.npz"
        path.write_bytes(pickle.dumps({"train": np.arange(3), "validation": np.array([4], np.int32), "test": [5]}, protocol=protocol))
        parts = load_split_file(path)
        assert parts["train"].tolist() == [0, 1, 2] and parts["test"] == [5]


# --- property-based: the loaders give a result or an LczmapError, nothing else --------------------

_numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**12, 10**12))
_coord = st.lists(_numbers, min_size=0, max_size=3)
_ring = st.lists(_coord, min_size=0, max_size=6)
_geometry = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["Polygon", "MultiPolygon", "Point", "LineString", "Bogus"]),
                           "coordinates": st.one_of(st.lists(_ring, max_size=2), _coord, st.lists(st.lists(_ring, max_size=2), max_size=2))}),
    st.none(), st.integers(), st.text(max_size=5),
)
_crs = st.one_of(st.none(), st.fixed_dictionaries({"type": st.just("name"), "properties": st.fixed_dictionaries(
    {"name": st.sampled_from(["EPSG:4326", "EPSG:32652", "EPSG:5773", "urn:ogc:def:crs:EPSG::3857", "nonsense"])})}))
_geojson = st.one_of(
    st.builds(lambda geoms, crs: {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, "geometry": g} for g in geoms],
                                   **({"crs": crs} if crs else {})}, st.lists(_geometry, max_size=3), _crs),
    _geometry,
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(doc=_geojson, as_text=st.booleans())
def test_aoi_loader_gives_a_geometry_or_an_lczmap_error(tmp_path, doc, as_text):
    from lczmap.aoi import read_aoi

    path = tmp_path / "aoi.geojson"
    path.write_text(json.dumps(doc) if as_text else json.dumps(doc)[: max(1, len(json.dumps(doc)) // 2)])
    try:
        geom = read_aoi(path)
    except LczmapError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
    else:
        assert not geom.is_empty


_yaml_value = st.one_of(st.none(), st.booleans(), _numbers, st.text(max_size=12), st.lists(st.text(max_size=6), max_size=3),
                        st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
_city_keys = st.sampled_from(["name", "aoi", "sentinel2", "dsm", "dtm", "landcover", "landcover_scheme", "osm", "osm_online",
                              "vhr", "reference", "reference_column", "truth", "unknown"])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.one_of(st.dictionaries(_city_keys, _yaml_value, max_size=6), _yaml_value), raw=st.binary(max_size=40))
def test_city_yaml_loader_gives_a_config_or_an_lczmap_error(tmp_path, doc, raw):
    from lczmap.config import CityConfig, load_city_config

    path = tmp_path / "city.yaml"
    path.write_bytes(yaml.safe_dump(doc).encode() + (raw if doc is None else b""))
    try:
        config = load_city_config(path)
    except LczmapError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(config, CityConfig) and isinstance(config.aoi, Path) and isinstance(config.osm_online, bool)


def test_sentinel2_is_one_path_or_a_tuple(tmp_path):
    from lczmap.config import load_city_config

    path = _write(tmp_path / "city.yaml", "aoi: a.geojson\nsentinel2: [a.SAFE, b.SAFE]\n")
    assert load_city_config(path).sentinel2 == (tmp_path / "a.SAFE", tmp_path / "b.SAFE")
    _write(path, "aoi: a.geojson\nsentinel2: a.SAFE\nosm_online: true\n")
    config = load_city_config(path)
    assert config.sentinel2 == tmp_path / "a.SAFE" and config.osm_online is True


# --- crash-safe replacement, interrupted renames, locks ---------------------------------------------

def _zarr_store(path: Path, value: float) -> None:
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("stack", shape=(2, 64, 64), chunks=(2, 32, 32), dtype="float32")[:] = value


def _store_value(path: Path) -> float:
    import zarr

    data = zarr.open_group(str(path), mode="r")["stack"][:]
    assert data.shape == (2, 64, 64) and np.unique(data).size == 1  # complete: every chunk present
    return float(data[0, 0, 0])


def _run_killed(code: str) -> int:
    """Run `code` in a fresh interpreter that SIGKILLs itself at the marked instant; its exit signal."""
    proc = subprocess.run([PYTHON, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    return proc.returncode


KILL_AFTER_RENAMES = """
    import os, signal, sys
    from pathlib import Path
    from lczmap import atomic
    calls, limit = [0], {limit}
    real = os.replace
    def replace(a, b):
        real(a, b)
        calls[0] += 1
        if calls[0] >= limit:
            os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace
    if {fallback}:
        atomic._exchange = lambda a, b: False
    atomic.replace_path(Path({new!r}), Path({final!r}))
"""


@pytest.mark.parametrize("fallback", [False, True], ids=["exchange", "rename-aside"])
def test_kill_while_replacing_a_staged_store_never_loses_a_complete_store(tmp_path, fallback):
    from lczmap.atomic import recover_aside

    final, new = tmp_path / "stack.zarr", tmp_path / "stack.zarr.partial"
    _zarr_store(final, 1.0)
    _zarr_store(new, 2.0)
    _run_killed(KILL_AFTER_RENAMES.format(limit=1, fallback=fallback, new=str(new), final=str(final)))
    if not fallback:  # swapped in one step: the final path held a complete store at every instant
        assert _store_value(final) == 2.0
    recover_aside(final)  # what the next `lczmap stage` on this output does first
    assert _store_value(final) in (1.0, 2.0)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "stack.zarr.partial") == ["stack.zarr"]


def test_stage_over_an_existing_store_replaces_it_and_a_wrong_kind_partial_is_cleared(world, tmp_path):
    out = tmp_path / "s.zarr"
    _zarr_store(out, 7.0)
    _write(tmp_path / "s.zarr.partial", "a file where a store belongs")  # a stale partial of the wrong kind
    config = _city_yaml(world.city, tmp_path / "c" / "city.yaml", dsm=None, dtm=None, landcover=None, osm=None, vhr=None)
    result = CliRunner().invoke(cli, ["-q", "stage", "--config", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    from lczmap.stage import open_stack

    assert open_stack(out).data.shape[0] == 13
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "s.zarr", "s.zarr.report.json"]


PREDICT_RENAMES = """
    import os, signal
    from pathlib import Path
    from lczmap.atomic import atomic_files
    from lczmap.outputs import output_paths
    out = Path({out!r})
    paths = [output_paths(out)[k] for k in ("map", "summary", "quicklook", "style")]
    calls, real = [0], os.replace
    def replace(a, b):
        real(a, b)
        if str(b).endswith({after!r}):
            os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace
    with atomic_files(paths) as tmps:
        for t in tmps:
            t.write_text("new")
        if {kill_while_writing}:
            os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("after,kill_while_writing", [("lcz.tif", False), ("lcz.png", False), ("", True)],
                         ids=["after-first-rename", "after-third-rename", "while-writing"])
def test_kill_during_predicts_renames_leaves_one_runs_set(tmp_path, after, kill_while_writing):
    from lczmap.outputs import check_output, output_paths

    out = tmp_path / "lcz.tif"
    finals = [output_paths(out)[k] for k in ("map", "summary", "quicklook", "style")]
    for p in finals:
        p.write_text("old")
    _run_killed(PREDICT_RENAMES.format(out=str(out), after=after or "never", kill_while_writing=kill_while_writing))
    check_output(out)  # the next run's first step completes or discards the interrupted one
    contents = {p.read_text() for p in finals}
    assert contents == ({"old"} if kill_while_writing else {"new"})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in finals)  # no temporaries, no journal


def test_a_writer_given_time_waits_for_the_holder_to_finish(tmp_path):
    """output_lock(wait=...) (a batch city task after an orphaned task of a stopped run): it gets the lock once the
    holder is done, and still gives up with the holder's pid when the wait runs out first."""
    from lczmap.locking import output_lock

    out, done = tmp_path / "lcz.tif", tmp_path / "holder-done"
    code = (f"import time, pathlib; from lczmap.locking import output_lock\nwith output_lock({str(out)!r}):\n"
            f"    print('held', flush=True); time.sleep(1.5); pathlib.Path({str(done)!r}).touch()")
    holder = subprocess.Popen([PYTHON, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputBusyError, match=f"being written by process {holder.pid}"), output_lock(out, wait=0.2):
            pass
        with output_lock(out, wait=60):
            assert done.exists()  # the holder finished (it touches the file before letting go)
    finally:
        holder.kill()
        holder.wait()


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    from lczmap.locking import output_lock

    out = tmp_path / "stack.zarr"
    code = f"import time; from lczmap.locking import output_lock\nwith output_lock({str(out)!r}):\n    print('held', flush=True); time.sleep(60)"
    holder = subprocess.Popen([PYTHON, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputBusyError, match=f"being written by process {holder.pid}"), output_lock(out):
            pass
    finally:
        holder.kill()
        holder.wait()
    with output_lock(out):  # the kernel dropped the dead holder's lock
        pass
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_live_processes_are_kept(tmp_path):
    from lczmap.locking import stale_temporaries

    target = tmp_path / "lcz.tif"
    live = _write(tmp_path / f".lcz.tif.{os.getpid()}.tmp", "mine")
    dead = subprocess.Popen(["true"])
    dead.wait()
    gone = _write(tmp_path / f".lcz.tif.{dead.pid}.tmp", "theirs")
    assert stale_temporaries(target) == [gone] and live.exists()


def test_a_file_size_limit_while_writing_is_one_line_and_leaves_no_output(world, tmp_path):
    """EFBIG (a file-size limit; a full disk takes the same path): `lczmap stage` names the file it was writing."""
    import resource

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process instead of failing write()
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))

    safe = str(next(world.city.glob("*.SAFE")))
    config = _city_yaml(world.city, tmp_path / "c" / "city.yaml", sentinel2=safe, osm=None, landcover=None, vhr=None, dtm=None)
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([str(Path(PYTHON).parent / "lczmap"), "-q", "stage", "--config", str(config), "--out", str(out / "s.tif")],
                          preexec_fn=limit, capture_output=True, text=True, timeout=300, cwd=REPO)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and "s.tif" in errors[0]
    assert list(out.iterdir()) == []
