"""`lczmap batch` pipelines set the Sentinel-2 compositing options of `lczmap predict` (`composite`, `mask_snow`):
in the defaults and per city, checked by the pipeline's schema, and given to the city's predict run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from lczmap.batch import load_pipeline, map_city
from lczmap.cli import cli
from lczmap.errors import LczmapError
from lczmap.sources.sentinel2 import SCL_SNOW


def write_pipeline(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_compositing_options_merge_like_the_other_predict_options(tmp_path):
    pipe = write_pipeline(tmp_path / "p.yaml", {
        "output_dir": "out", "composite": "best",
        "cities": [{"name": "a", "config": "a/city.yaml"},
                   {"name": "b", "config": "b/city.yaml", "composite": "median", "mask_snow": True}],
    })
    a, b = load_pipeline(pipe).cities
    assert a.options == {"composite": "best"}
    assert b.options == {"composite": "median", "mask_snow": True}  # per-city options win
    assert a.fingerprint() != b.fingerprint()  # a changed option redoes the city


@pytest.mark.parametrize("where,key,value,message", [
    ("defaults", "composite", "mean", r"'composite' must be one of median, best, got 'mean'"),
    ("city", "composite", 1, r"city 1: 'composite' must be one of median, best, got 1"),
    ("defaults", "mask_snow", "yes", r"'mask_snow' must be true or false \(unquoted\), got 'yes'"),
    ("city", "mask_snow", 1, r"city 1: 'mask_snow' must be true or false \(unquoted\), got 1"),
])
def test_a_bad_compositing_option_is_one_error_line_naming_the_key(tmp_path, where, key, value, message):
    city = {"name": "a", "config": "a.yaml"}
    doc = {"output_dir": "o", "cities": [city]}
    (doc if where == "defaults" else city)[key] = value
    pipe = write_pipeline(tmp_path / "p.yaml", doc)
    with pytest.raises(LczmapError, match=message):
        load_pipeline(pipe)
    result = CliRunner().invoke(cli, ["batch", str(pipe)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1 and f"'{key}'" in result.output
    assert not (tmp_path / "o").exists()  # nothing created


@pytest.mark.slow
def test_a_citys_compositing_options_reach_its_predict_run(tmp_path, demo_city):
    pipe = write_pipeline(tmp_path / "p.yaml", {
        "output_dir": "out", "cities": [{"name": "snowy", "config": str(demo_city / "city.yaml"), "composite": "best",
                                         "mask_snow": True}]})
    pipeline = load_pipeline(pipe)
    pipeline.output_dir.mkdir()
    entry = map_city(pipeline.cities[0], pipeline.output_dir)  # what a worker runs for the city
    assert entry["status"] == "done"
    s2 = json.loads((pipeline.output_dir / "snowy.summary.json").read_text())["sentinel2"]
    assert s2["composite"] == "best" and SCL_SNOW in s2["masked_scl"]
