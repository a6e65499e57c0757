"""The map's summary and console line: one set of words for the cell states (those of the `_filled` file),
absolute input paths, timings of every stage (plan, stage, infer, write, total), the Sentinel-2 scaling and DSM
height records."""

from __future__ import annotations

import json
import time
from pathlib import Path

import dask
import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from lczmap.cli import cli
from lczmap.demo import generate
from lczmap.outputs import CELL_STATES
from lczmap.stage import block_seconds, blockwise_array, record_block_seconds


@pytest.fixture(scope="module")
def mapped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict]:
    folder = tmp_path_factory.mktemp("words")
    generate(folder / "city", seed=4, size_km=1)
    out = folder / "lcz.tif"
    result = CliRunner().invoke(cli, ["predict", "--config", str(folder / "city" / "city.yaml"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output, json.loads(out.with_name("lcz.summary.json").read_text())


def test_console_and_summary_say_the_cell_states_in_the_filled_file_s_words(mapped):
    out, console, summary = mapped
    assert list(summary["aoi_shares"]) == ["mapped", "filled by the filter", "no class"]
    assert sum(summary["aoi_shares"].values()) == pytest.approx(1.0, abs=1e-3)
    assert "nodata_share" not in summary and "filled_share" not in summary
    line = next(s for s in console.splitlines() if s.startswith(f"Wrote {out}: "))
    for word, share in summary["aoi_shares"].items():
        assert f"{word} {share:.1%}" in line
    assert "no data" not in line
    with rasterio.open(out.with_name("lcz_filled.tif")) as src:
        values = src.tags(1)["values"]
    assert all(f"{code} {word}" in values for code, word in CELL_STATES.items())


def test_summary_inputs_are_absolute_paths(mapped):
    _, _, summary = mapped
    paths = [p for v in summary["inputs"].values() for p in (v if isinstance(v, list) else [v])]
    assert paths and all(Path(p).is_absolute() and Path(p).exists() for p in paths)


def test_summary_times_every_stage(mapped):
    _, console, summary = mapped
    seconds = summary["seconds"]
    assert set(seconds) == {"plan", "stage", "infer", "write", "total"}
    assert all(seconds[k] > 0 for k in seconds)
    assert seconds["total"] >= seconds["plan"] + seconds["write"] - 0.01
    assert f"; {seconds['total']:.0f} s" in console


def test_summary_keeps_the_scaling_and_height_records(mapped):
    _, _, summary = mapped
    products = summary["sentinel2"]["products"]
    assert products and all(p["scaling"]["rule"] and "assumed" in p["scaling"] for p in products)
    assert summary["dsm"]["height"]


def _slow_block(pause: float, rows: slice, cols: slice) -> np.ndarray:
    """A block task whose "plan" is how long it pauses: it records that as its stage, twice that as its infer."""
    time.sleep(pause)
    record_block_seconds(stage=pause, infer=2 * pause)
    return np.ones((1, rows.stop - rows.start, cols.stop - cols.start), np.float32)


def test_block_seconds_travel_with_the_blocks():
    """Seconds a block task records come back with its block (so from any thread or worker), each block run once."""
    array = blockwise_array(_slow_block, 0.01, "timed-test", (8, 8), 4, 1)
    total, steps = dask.compute(array.sum(), block_seconds(array), scheduler="threads")
    assert total == 64 and steps == pytest.approx({"stage": 0.04, "infer": 0.08})
    assert block_seconds(dask.array.ones((1, 8, 8), chunks=4)) is None
