"""Feeding the accelerator: stack round trip, on-device patch cutting, tiled JP2 window reads, bounded prefetch,
building fractions at C speed, a plan that does not grow with the city, and the warp approximation's error."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
import shapely.affinity
from affine import Affine
from odc.geo.geobox import GeoBox
from rasterio.enums import Resampling
from rasterio.features import rasterize

from lczmap.aoi import read_aoi
from lczmap.config import load_city_config
from lczmap.grid import city_grid
from lczmap.inference import infer_block, prefetch, prepare_block, run_blocks
from lczmap.predict import plan_city
from lczmap.sources import base, open_dsm, open_landcover, open_osm, open_products
from lczmap.sources.osm import INDEX_LAYER
from lczmap.stage import stage_city, write_stack

sys.path.insert(0, str(Path(__file__).parent))
from test_predict import random_model  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return random_model(tmp_path_factory.mktemp("models") / "random13")


@pytest.fixture(scope="module")
def config(demo_city_config):
    return load_city_config(demo_city_config)


@pytest.fixture(scope="module")
def plan(config, model):
    return plan_city(config, model, block=16)


def test_stack_round_trip_equals_direct_path(config, model, plan, tmp_path):
    grid = city_grid(read_aoi(config.aoi))
    stack = tmp_path / "stack.zarr"
    write_stack(stage_city(config, grid), stack, progress=False)
    from_stack = plan_city(None, model, resolution=None, block=16, stack=stack)
    assert from_stack.grid.output == plan.grid.output and from_stack.grid.base == plan.grid.base
    assert (from_stack.aoi_mask == plan.aoi_mask).all()
    direct, staged = run_blocks(plan), run_blocks(from_stack)
    assert (np.isnan(direct) == np.isnan(staged)).all()
    mapped = ~np.isnan(direct[0])
    same_class = (direct.argmax(0) == staged.argmax(0))[mapped].mean()
    # Staged chunks and prediction blocks are different windows: GDAL's row-wise transform approximation
    # (10 cm) may move a reprojected value by that much, so probabilities agree closely, classes all but exactly.
    assert same_class >= 0.999
    assert np.nanmax(np.abs(direct - staged)) < 0.05
    # The same stack serves another model with the same bands (here the same one in bfloat16 is not needed):
    # and a stack missing an input refuses a model that needs it, in one line.
    with pytest.raises(Exception, match="stack"):
        plan_city(None, model, resolution=200.0, stack=stack)


def test_cli_predict_from_stack(config, model, tmp_path):
    from click.testing import CliRunner

    from lczmap.cli import cli

    grid = city_grid(read_aoi(config.aoi))
    stack = tmp_path / "stack.zarr"
    write_stack(stage_city(config, grid), stack, progress=False)
    out = tmp_path / "lcz.tif"
    result = CliRunner().invoke(cli, ["-q", "predict", "--stack", str(stack), "--out", str(out), "--model", str(model),
                                      "--batch-size", "auto"])
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as src:
        assert src.shape == tuple(grid.output.shape) and (src.read(1) > 0).any()
    bad = CliRunner().invoke(cli, ["predict", "--stack", str(tmp_path / "none.zarr"), "--out", str(tmp_path / "x.tif")])
    assert bad.exit_code == 1 and bad.output.startswith("Error: --stack")


def _shapes(model) -> list[tuple]:
    """Record the input shapes a cached model is called with."""
    seen: list[tuple] = []
    call = model.predict_on_batch

    def recording(x):
        seen.append(tuple(x.shape))
        return call(x)

    model.predict_on_batch = recording
    return seen


def test_device_cutting_equals_host_cutting_here(plan):
    """On this process's backend (TensorFlow in CI): device cut == host cut; the device path calls the network
    with one fixed batch shape (compiled once), the host path pads only to a multiple of PAD_MULTIPLE."""
    from lczmap.inference import PAD_MULTIPLE, plan_model

    small = replace(plan, batch_size=96)  # 256 cells per block: calls of 96, 96 and 64 (host) or 96 (device)
    model, _ = plan_model(small)
    seen = _shapes(model)
    try:
        host_shapes, device_shapes = set(), set()
        for rows, cols in small.grid.output_blocks(small.block):
            prepared = prepare_block(small, rows, cols)
            seen.clear()
            host = infer_block(small, prepared, on_device=False)
            host_shapes |= set(seen)
            seen.clear()
            device = infer_block(small, prepared, on_device=True)
            device_shapes |= set(seen)
            assert (np.isnan(host) == np.isnan(device)).all()
            if (~np.isnan(host)).any():
                assert np.nanmax(np.abs(host - device)) < 1e-5
    finally:
        del model.predict_on_batch
    assert {s[0] for s in device_shapes} == {96}
    assert all(s[0] % PAD_MULTIPLE == 0 and s[0] <= 96 for s in host_shapes) and len(host_shapes) > 1


JAX_CHECK = """
import json, sys
import numpy as np
from lczmap.config import load_city_config
from lczmap.inference import infer_block, prepare_block, device_description
from lczmap.predict import plan_city
plan = plan_city(load_city_config(sys.argv[1]), sys.argv[2], block=16, batch_size=64)
diff, cells = 0.0, 0
for rows, cols in plan.grid.output_blocks(plan.block):
    p = prepare_block(plan, rows, cols)
    host, device = infer_block(plan, p, on_device=False), infer_block(plan, p, on_device=True)
    assert (np.isnan(host) == np.isnan(device)).all()
    if (~np.isnan(host)).any():
        diff = max(diff, float(np.nanmax(np.abs(host - device))))
    cells += int((~np.isnan(host[0])).sum())
print(json.dumps({"diff": diff, "cells": cells, "device": device_description()}))
"""


def test_device_cutting_equals_host_cutting_on_jax(demo_city_config, model):
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", JAX_CHECK, str(demo_city_config), str(model)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "on jax" in result["device"] and result["cells"] > 0
    assert result["diff"] < 1e-5


def test_tiled_jp2_window_read_decodes_only_touched_tiles(tmp_path, caplog):
    """A 2048 x 2048 JP2 in 1024 x 1024 tiles (as L2A bands are): a window decodes only the tiles it touches."""
    import logging
    import re

    from lczmap.demo.sentinel2_safe import JP2_OPTIONS

    path = tmp_path / "T52SCG_B02_10m.jp2"
    transform = Affine(10, 0, 300000, 0, -10, 4000000)
    data = (np.arange(2048 * 2048, dtype=np.uint32) % 5000).astype(np.uint16).reshape(2048, 2048)
    with rasterio.open(path, "w", driver="JP2OpenJPEG", width=2048, height=2048, count=1, dtype="uint16",
                       crs="EPSG:32652", transform=transform, BLOCKXSIZE=1024, BLOCKYSIZE=1024, **JP2_OPTIONS) as dst:
        dst.write(data, 1)
    with rasterio.open(path) as src:
        assert src.block_shapes == [(1024, 1024)]

    def decoded(row: int, col: int, size: int) -> set[int]:
        """OpenJPEG's tile numbers decoded to read a size x size window at pixel (row, col)."""
        window = GeoBox((size, size), Affine(10, 0, 300000 + 10 * col, 0, -10, 4000000 - 10 * row), "EPSG:32652")
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="rasterio"), rasterio.Env(CPL_DEBUG=True):
            got = base.warp(str(path), [1], window, Resampling.nearest)[0]
        assert (got == data[row:row + size, col:col + size]).all()
        return {int(m) for m in re.findall(r"Tile (\d+)/4 has been decoded", caplog.text)}

    assert decoded(300, 200, 100) == {1}  # inside the first tile
    assert decoded(1500, 1100, 100) == {4}  # inside the last
    # Across tiles 1 and 3: tile 1 is still in GDAL's block cache (the handle stays open), so only 3 is decoded.
    assert decoded(1000, 300, 100) == {3}


def test_prefetch_is_bounded_and_ordered():
    held = {"produced": 0, "consumed": 0, "most": 0}
    lock = threading.Lock()

    def read(i: int) -> int:
        time.sleep(0.002)
        with lock:
            held["produced"] += 1
            held["most"] = max(held["most"], held["produced"] - held["consumed"])
        return i

    got = []
    for value in prefetch(range(40), read, depth=3, readers=2):
        time.sleep(0.005)  # a slow consumer (the model): readers must wait, not run ahead
        with lock:
            held["consumed"] += 1
        got.append(value)
    assert got == list(range(40))
    assert held["most"] <= 3


def _supersampled(polygons, geobox: GeoBox, s: int = 10) -> np.ndarray:
    """The former reader: rasterio burns every polygon at 1/s of a pixel, then averages (10 x 10 supersampling)."""
    h, w = geobox.shape
    fine = np.zeros((h * s, w * s), "uint8")
    if len(polygons):
        rasterize(polygons, out=fine, transform=geobox.affine @ Affine.scale(1 / s), default_value=1)
    return fine.reshape(h, s, w, s).sum(axis=(1, 3)) / np.float32(s * s)


def test_osm_fractions_equal_the_supersampled_ones(config):
    import pyogrio

    grid = city_grid(read_aoi(config.aoi))
    source = open_osm(config.osm, grid.base)
    _, _, wkb, _ = pyogrio.raw.read(source.index, layer=INDEX_LAYER)
    polygons = shapely.from_wkb(wkb)
    assert len(polygons) == source.buildings > 100
    for rows, cols in [(slice(0, grid.base.shape[0]), slice(0, grid.base.shape[1])), (slice(37, 160), slice(90, 211))]:
        box = grid.base[rows, cols]
        new = source.read(box)[0]
        old = _supersampled(polygons, box)
        finite = np.isfinite(new)
        assert finite.mean() > 0.5
        assert np.abs(new[finite] - old[finite]).max() <= 0.01
    # The index is built once: a second plan reuses it without parsing the OSM file.
    again = open_osm(config.osm, grid.base)
    assert again.index == source.index


def test_block_task_input_does_not_grow_with_the_city(config, model, tmp_path):
    """A 24 km AOI over the 3 km demo city's sources: the plan a block task receives is as small as the 3 km one."""
    small = plan_city(config, model)
    aoi = read_aoi(config.aoi).to_crs(small.grid.crs)
    # The demo AOI scaled 8 times (the same vertices), so only the grid's size differs.
    big = shapely.affinity.scale(aoi.geom, 8, 8, origin="centroid")
    path = Path(config.aoi).with_name("aoi24.geojson")
    from odc.geo.geom import Geometry

    lonlat = Geometry(big, small.grid.crs).to_crs("EPSG:4326")
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": lonlat.json}]}))
    large = plan_city(replace(config, aoi=path), model)
    assert large.grid.output.shape[0] >= 8 * small.grid.output.shape[0] - 8
    # The large AOI reaches past the demo inputs, so its plan also carries their (bounded) low-coverage warnings.
    assert large.stage.warnings and not small.stage.warnings
    sizes = [len(pickle.dumps((replace(p, stage=replace(p.stage, warnings=())), slice(0, 48), slice(0, 48))))
             for p in (small, large)]
    assert abs(sizes[1] - sizes[0]) < 0.02 * sizes[0], sizes


def test_warp_approximation_error_is_below_the_data_precision(config, monkeypatch):
    """GDAL's approximate transformer (WARP_TOLERANCE px) against an exact transform of every pixel."""
    grid = city_grid(read_aoi(config.aoi))
    box = grid.base
    dsm = open_dsm(config.dsm, config.dtm, grid.aoi)
    landcover = open_landcover(config.landcover, config.landcover_scheme, grid.aoi, grid.base)
    s2 = open_products(config.sentinel2, grid)
    approx = [src.read(box) for src in (dsm, landcover, s2)]
    monkeypatch.setattr(base, "WARP_TOLERANCE", 1e-9)
    exact = [src.read(box) for src in (dsm, landcover, s2)]
    # Heights: DSMs (GLO-30, AW3D30) are published in whole metres, with metres of vertical error.
    assert np.nanmax(np.abs(approx[0] - exact[0])) < 0.5
    # Land cover: only pixels whose centre lies within 10 cm of a source pixel edge may change class.
    changed = (approx[1] != exact[1]) & np.isfinite(exact[1])
    assert changed.mean() < 0.002
    # Sentinel-2 (same UTM zone here): below one digital number (1e-4 reflectance).
    assert np.nanmax(np.abs(approx[2] - exact[2])) < 1e-4


def test_auto_batch_size_is_capped_at_one_block(config, model):
    """--batch-size auto: never more patches per call than a block has cells (a larger batch would be padding)."""
    from lczmap.inference import CPU_BATCH, resolve_batch_size

    card = plan_city(config, model, block=16).card
    assert resolve_batch_size(card, "auto", 48) == CPU_BATCH  # this CPU: 256 < 48 x 48
    assert resolve_batch_size(card, "auto", 8) == 64
    assert resolve_batch_size(card, 512, 8) == 512  # a number is taken as given
    assert plan_city(config, model, block=8, batch_size="auto").batch_size == 64


def test_profiled_read_and_cold_files(plan):
    """read_chunk adds each source's read time by key; close_datasets drops the idle handles (and their decoded
    blocks) and the next read opens the files again, with the same values."""
    from lczmap.stage import read_chunk

    window = plan.grid.window(slice(0, 16), slice(0, 16), plan.card.patch_size)
    seconds: dict[str, float] = {}
    first = read_chunk(plan.stage, *window, seconds=seconds)
    assert set(seconds) == {s.key for s, pos in zip(plan.stage.sources, plan.stage.positions) if pos}
    assert all(v > 0 for v in seconds.values())
    assert base._handles
    base.close_datasets()
    assert not base._handles
    np.testing.assert_array_equal(read_chunk(plan.stage, *window), first)


KEEP_CHECK = """
import sys
import numpy as np
from lczmap.card import load_card
from lczmap.inference import cached_model
card = load_card(sys.argv[1])
model, _ = cached_model(card)
model.predict_on_batch(np.zeros((4, *card.input_shape), "float32"))
"""


def test_jax_keeps_compiled_networks_in_the_cache(model, tmp_path):
    """On JAX a loaded network's compilations are kept under $LCZMAP_CACHE/jax for the next process."""
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "LCZMAP_CACHE": str(tmp_path)}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    done = subprocess.run([sys.executable, "-c", KEEP_CHECK, str(model)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert any(p.is_file() for p in (tmp_path / "jax").rglob("*"))
