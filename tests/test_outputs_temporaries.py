"""A killed `lczmap predict` leaves temporaries beside its output (files, and the `.NAME.<pid>.tmp.blocks/` folder of
block files): the next run removes those of dead processes and never a live process's."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from lczmap.atomic import blocks_folder
from lczmap.config import load_city_config
from lczmap.predict import predict_city


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_the_next_run_removes_a_dead_runs_block_folder_and_keeps_a_live_ones(demo_city: Path, tmp_path: Path):
    out = tmp_path / "lcz.tif"
    live = subprocess.Popen(["sleep", "120"])  # another process that writes the same output (a second run, still going)
    try:
        folders = {}
        for name, pid in (("dead", _dead_pid()), ("live", live.pid)):
            folder = blocks_folder(out.with_name(f".{out.name}.{pid}.tmp"))
            folder.mkdir()
            (folder / "b0_0.tif").write_bytes(b"a block file of the interrupted run")
            folders[name] = folder
        assert folders["dead"].name.endswith(".tmp.blocks")
        dead_file = out.with_name(f".{out.name}.{_dead_pid()}.tmp")  # a dead run's temporary map, as before
        dead_file.write_text("half a map")
        predict_city(load_city_config(demo_city / "city.yaml"), out, progress=False)
        assert not folders["dead"].exists() and not dead_file.exists()
        assert (folders["live"] / "b0_0.tif").is_file()  # a live process's folder is never touched
        assert out.is_file() and not blocks_folder(out.with_name(f".{out.name}.{os.getpid()}.tmp")).exists()
    finally:
        live.kill()
        live.wait()
