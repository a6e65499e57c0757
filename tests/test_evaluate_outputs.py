"""`lczmap evaluate`'s outputs: never over an input or over each other, and written as one set (all or none)."""

import os
import resource
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from test_evaluate import CRS, cells, write_map

from lczmap.cli import cli


@pytest.fixture()
def scene(tmp_path):
    """A 20 x 20 map of two classes and two reference polygons, each mapped right."""
    lcz = np.full((20, 20), 2, np.uint8)
    lcz[:, 10:] = 6
    map_path = write_map(tmp_path / "lcz.tif", [lcz])
    ref = tmp_path / "ref.geojson"
    gpd.GeoDataFrame({"lcz": [2, 6]}, geometry=[cells(2, 2), cells(2, 12)], crs=CRS).to_file(ref)
    return map_path, ref


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize("out, message", [
    ("lcz.tif", "would overwrite the --map"),  # the report over the map
    ("ref.geojson", "would overwrite the --reference"),
    ("lcz.json", "would overwrite the --map"),  # its PNG is lcz.png, its agreement map lcz.agreement.tif: fine; see below
    ("r.png", "the report and the confusion would both be"),  # the report, then the confusion PNG over it
    ("r.agreement.tif.json", None),  # allowed: three different files
    ("ref.geojson/x.json", "would overwrite the --reference"),  # inside an input
], ids=["map", "reference", "agreement-over-map", "png-over-report", "distinct", "inside-input"])
def test_outputs_over_inputs_or_each_other_are_refused_before_any_work(scene, out, message):
    map_path, ref = scene
    folder = map_path.parent
    if out == "lcz.json":  # the map is named like the agreement map of --out lcz.json
        map_path = write_map(folder / "lcz.agreement.tif", [np.full((20, 20), 2, np.uint8)])
    before = snapshot(folder)
    result = CliRunner().invoke(cli, ["evaluate", "--map", str(map_path), "--reference", str(ref), "--bootstrap", "2",
                                      "--out", str(folder / out)])
    if message is None:
        assert result.exit_code == 0, result.output
        return
    line = one_error_line(result)
    assert line.startswith(f"Error: --out {folder / out}: ") and message in line, line
    assert snapshot(folder) == before  # nothing written, no input touched


def test_a_link_to_the_map_is_refused(scene):
    map_path, ref = scene
    link = map_path.with_name("link.json")
    link.symlink_to(map_path)
    result = CliRunner().invoke(cli, ["evaluate", "--map", str(map_path), "--reference", str(ref), "--out", str(link)])
    assert "would overwrite the --map" in one_error_line(result)
    assert map_path.read_bytes()[:2] in (b"II", b"MM")  # still the GeoTIFF


def test_model_outputs_over_its_data_or_into_its_folder_are_refused(tmp_path):
    """--model mode: the report may not be the --data file nor lie inside the model folder."""
    from lczmap.card import load_card

    card = load_card()
    data = tmp_path / "test.h5"
    with h5py.File(data, "w") as f:
        f["sen2"] = np.zeros((2, 48, 48, 13), np.float32)
        f["label"] = np.eye(17)[[1, 2]]
    before = data.read_bytes()
    for out, message in ((data, "would overwrite the --data"), (card.folder / "e.json", "would overwrite the --model folder")):
        result = CliRunner().invoke(cli, ["evaluate", "--model", str(card.folder), "--data", str(data), "--out", str(out)])
        assert message in one_error_line(result), result.output
    assert data.read_bytes() == before and not (card.folder / "e.json").exists()


def test_a_failed_write_leaves_no_output_at_its_final_path(scene):
    """Under a file-size limit the confusion PNG cannot be written: the report and agreement map, though complete,
    are not left at their final paths either, nor any temporary; one line naming the file, exit 1."""
    map_path, ref = scene
    out = map_path.with_name("e.json")
    result = subprocess.run(
        [sys.executable, "-c", "from lczmap.cli import main; main()", "evaluate", "--map", str(map_path),
         "--reference", str(ref), "--bootstrap", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000)))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [f"Error: {out.with_suffix('.png')}: confusion-matrix figure cannot be written "
                     "(file too large (a file-size limit was reached))"], result.stderr
    assert {p.name for p in map_path.parent.iterdir()} == {"lcz.tif", "ref.geojson"}
