"""`lczmap batch`: a city's record is committed in one journal with its files (kill -9 at every step of the commit
never makes a finished city run again), and a city that fails on a worker is one line on the console."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lczmap.batch import MANIFEST, CityJob, Pipeline, is_finished, record_path, run_batch, settle_city
from lczmap.card import sha256
from lczmap.outputs import MAP_FILES, output_paths

LCZMAP = Path(sys.executable).parent / "lczmap"

# A fork server: imports lczmap once, then per (scenario, k) forks a process that commits a city's set of files
# with its record (the batch's own code: `_recorded` around `file_set`, as map_city does) and SIGKILLs itself
# just before the k-th rename or unlink in the output folder; k grows until a commit runs to its end.
COMMIT_AND_KILL = r"""
import json, os, signal, sys
from pathlib import Path
from lczmap.batch import CityJob, _recorded
from lczmap.outputs import MAP_FILES, file_set, output_paths

root, job_doc = Path(sys.argv[1]), json.loads(sys.argv[2])
job = CityJob(job_doc["name"], Path(job_doc["config"]), {}, job_doc["weights_sha256"])

def commit(out, run):
    tif = out / f"{job.name}.tif"
    paths = output_paths(tif)
    with _recorded(job, tif), file_set({k: paths[k] for k in MAP_FILES}) as tmp:
        for key, path in tmp.items():
            path.write_text(f"{key} of run {run}")
        tmp["summary"].write_text(json.dumps({"outputs": {k: paths[k].name for k in MAP_FILES}, "run": run}))

def killed_at(out, k):
    steps = [0]
    def step(real):
        def call(path, *args, **kwargs):
            if str(path).startswith(str(out)):
                if steps[0] == k:
                    os.kill(os.getpid(), signal.SIGKILL)
                steps[0] += 1
            return real(path, *args, **kwargs)
        return call
    os.replace, os.unlink = step(os.replace), step(os.unlink)
    commit(out, "new")

runs = []
for scenario in ("first", "again"):
    for k in range(100):
        out = root / f"{scenario}-{k}"
        out.mkdir()
        if scenario == "again":
            commit(out, "old")  # a city finished before (files and record in place) mapped again
        pid = os.fork()
        if pid == 0:
            killed_at(out, k)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        runs.append({"scenario": scenario, "k": k, "out": str(out), "killed": killed})
        if not killed:
            break
print(json.dumps(runs))
"""


def set_run(out: Path, name: str) -> set[str]:
    """Which runs ("old", "new") wrote the files of city `name`'s set at their final paths."""
    paths = output_paths(out / f"{name}.tif")
    runs = {json.loads(paths["summary"].read_text())["run"]} if paths["summary"].exists() else set()
    runs |= {paths[k].read_text().rsplit(" ", 1)[-1] for k in MAP_FILES if k != "summary" and paths[k].exists()}
    return runs


def test_a_kill_at_any_step_of_a_city_commit_never_maps_a_finished_city_again(tmp_path):
    job = CityJob("alpha", tmp_path / "alpha" / "city.yaml", {}, "weights")
    result = subprocess.run([sys.executable, "-c", COMMIT_AND_KILL, str(tmp_path),
                             json.dumps({"name": job.name, "config": str(job.config), "weights_sha256": job.weights_sha256})],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(result.stdout)
    for scenario in ("first", "again"):
        steps = [r for r in runs if r["scenario"] == scenario]
        assert [r["killed"] for r in steps] == [True] * (len(steps) - 1) + [False]
        assert len(steps) > len(MAP_FILES) + 2  # a kill before, between and after each of the renames
    new_since: dict[str, int] = {}  # per scenario, the first step whose kill leaves the new set: so must every later one
    for run in runs:
        out, scenario = Path(run["out"]), run["scenario"]
        where = f"killed at step {run['k']} of the {scenario} commit"
        entry = settle_city(out, job.name)
        assert not [p.name for p in out.iterdir() if p.name.startswith(".")], f"{where}: temporaries left"
        files = set_run(out, job.name)
        if files == {"new"}:
            new_since.setdefault(scenario, run["k"])
        assert files == ({"new"} if scenario in new_since else {"old"} if scenario == "again" else set()), where
        if not files:  # killed before its commit point: the city was never finished, and nothing is half-written
            assert entry is None and not is_finished(job, entry, out), where
            continue
        assert is_finished(job, entry, out), where
        # the batch run again: the city is skipped, its files untouched
        tif = out / f"{job.name}.tif"
        before = os.stat(tif)
        manifest = run_batch(Pipeline(tmp_path / "p.yaml", out, (job,)))
        assert manifest["cities"][job.name]["status"] == "skipped", where
        assert manifest["cities"][job.name]["sha256"] == sha256(tif) and os.stat(tif).st_ino == before.st_ino
    # the commit point (the journal in place) comes after the temporaries and before the first rename
    assert 0 < new_since["first"] == new_since["again"] < len(MAP_FILES)


# --- a real batch: killed after a city's files are in place, then run again with a city that fails on a worker --

# The batch in one process (its cluster's worker threads too), SIGKILLed where it would write a city's "done" into
# manifest.json: the city's files are in place, and before the record was committed with them nothing said so.
KILL_BEFORE_MANIFEST = r"""
import os, signal, sys
import lczmap.batch as batch
from distributed import Client

write_manifest = batch.write_manifest

def write_manifest_or_die(output_dir, manifest):
    if any(entry["status"] == "done" for entry in manifest["cities"].values()):
        os.kill(os.getpid(), signal.SIGKILL)
    write_manifest(output_dir, manifest)

batch.write_manifest = write_manifest_or_die
with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
    batch.run_batch(batch.load_pipeline(sys.argv[1]), client=client)
"""


@pytest.fixture(scope="module")
def killed_then_failed(tmp_path_factory):
    """A 1 km city mapped by a batch killed before its manifest said so; then `lczmap batch` again with a second
    city whose DSM is not a raster (found only on the worker, while planning)."""
    from lczmap.demo import generate

    root = tmp_path_factory.mktemp("journal")
    generate(root / "good", seed=1, size_km=1)
    shutil.copytree(root / "good", root / "bad")
    (root / "bad" / "dsm.tif").write_bytes((root / "good" / "dsm.tif").read_bytes()[:3000])
    pipe = root / "p.yaml"
    pipe.write_text(yaml.safe_dump({"output_dir": "out", "cities": [{"name": "good", "config": "good/city.yaml"}]}))
    first = subprocess.run([sys.executable, "-c", KILL_BEFORE_MANIFEST, str(pipe)], capture_output=True, text=True,
                           timeout=300)
    out = root / "out"
    tif = out / "good.tif"
    assert first.returncode == -9 and tif.is_file(), first.stderr[-3000:]
    kept = os.stat(tif)
    pipe.write_text(yaml.safe_dump({"output_dir": "out", "cities": [{"name": "good", "config": "good/city.yaml"},
                                                                     {"name": "bad", "config": "bad/city.yaml"}]}))
    second = subprocess.run([str(LCZMAP), "batch", str(pipe), "--workers", "1", "--threads", "1"], capture_output=True,
                            text=True, timeout=300)
    return {"out": out, "kept": kept, "second": second, "manifest": json.loads((out / MANIFEST).read_text())}


@pytest.mark.slow
def test_a_city_whose_files_were_in_place_when_the_batch_was_killed_is_not_mapped_again(killed_then_failed):
    run, out = killed_then_failed, killed_then_failed["out"]
    assert run["manifest"]["cities"]["good"]["status"] == "skipped", run["second"].stderr[-3000:]
    after = os.stat(out / "good.tif")
    assert (after.st_ino, after.st_mtime_ns) == (run["kept"].st_ino, run["kept"].st_mtime_ns)
    assert json.loads(record_path(out, "good").read_text())["sha256"] == sha256(out / "good.tif")


@pytest.mark.slow
def test_a_city_that_fails_on_a_worker_is_one_line_without_a_traceback(killed_then_failed):
    second = killed_then_failed["second"]
    assert second.returncode == 1
    failed = [line for line in second.stderr.splitlines() if line.startswith("failed")]
    assert len(failed) == 1 and failed[0].startswith("failed   bad: "), second.stderr
    assert "dsm.tif: DSM is not a raster GDAL can read" in failed[0]
    for noise in ("Traceback", "Compute Failed", "LczmapError(", "Exception:"):
        assert noise not in second.stderr, second.stderr
    assert killed_then_failed["manifest"]["cities"]["bad"]["error"] == failed[0].removeprefix("failed   bad: ")
    assert "traceback" not in killed_then_failed["manifest"]["cities"]["bad"]
