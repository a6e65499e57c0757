"""Benchmark training from a coarse LCZ map (weak labels) against training from the truth, on a held-out demo city.

    python benchmarks/weak_labels.py [--city-km 5] [--epochs 20] [--init MODEL] [--json FILE] [--extra-model NAME ...]
                                     [--hygiene="--min-agreement 6"] [--train-seed 31 --train-seed 33 ...]

Demo cities are generated (cached in $LCZMAP_CACHE/bench, default ~/.cache/lczmap/bench): A to train on (one per
--train-seed, default one), B held out. Each A's truth map is degraded the way a real coarse LCZ map is (`degrade`):
mode-resampled onto a 100 m EPSG:4326 grid like the global LCZ map's, shifted by half a cell, --flip of its cells
changed to a confusable class (the most similar class present, by the WUDAPT accuracy weights), --holes of its cells
set to nodata (in patches), written as a WUDAPT-style int32 GeoTIFF with nodata -999. Each A gets two copies of its
city.yaml in the work folder, `reference:` set to its weak labels and to its truth. Then, with the command line only:

    lczmap train --city A-weak.yaml [...] --network msmla18 --epochs E --out weak/                    (default hygiene)
    lczmap train --city A-clean.yaml [...] --min-agreement 0 ... --out clean/                           (same budget)
    lczmap train --city A-weak.yaml [...] --bands B02,...,B12 ... --out s2/                  (Sentinel-2 bands only)
    lczmap predict --config B/city.yaml --model weak/ --out weak.tif   (and clean/)
    lczmap evaluate --map weak.tif --reference B/truth_lcz.tif

and reports OA, OA_bu and kappa of the three maps against B's truth (all cells), the weak labels' own agreement with
each A's truth, and whether the goal is met: weak-label OA >= 0.80 and within 0.05 of the clean model. Each
--extra-model (a name or folder, e.g. a Sentinel-2-only model) is scored on the same held-out city; with --init both
runs fine-tune that model (which is scored too, as it was) instead of starting from random weights (the
Sentinel-2-only run, whose bands differ from any full model's, always starts from random weights).
--hygiene replaces the default label hygiene of both weak-label runs (the options of `lczmap train`). Figures
come from this one run on this machine (training is seeded, but threads make it not bit-exact).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from lczmap.stage import S2_BANDS

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CACHE = Path(os.environ.get("LCZMAP_CACHE") or Path.home() / ".cache" / "lczmap") / "bench"
GLOBAL_MAP_CELL_DEG = 0.0008983152841195215  # the global LCZ map's cell (100 m at the equator)
GOAL_OA, GOAL_GAP = 0.80, 0.05
LABEL_NODATA = -999


def lczmap(*args: str) -> float:
    """Run one lczmap command (quiet), fail loudly; returns its wall time in seconds."""
    t0 = time.perf_counter()
    command = [shutil.which("lczmap") or "lczmap", "-q", *args]
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True)
    return time.perf_counter() - t0


def demo_city(folder: Path, seed: int, size_km: float, scenes: int) -> Path:
    if not (folder / "city.yaml").exists():
        lczmap("demo-data", str(folder), "--seed", str(seed), "--size-km", f"{size_km:g}", "--scenes", str(scenes))
    return folder / "city.yaml"


def degrade(truth: Path, out: Path, flip: float, holes: float, shift: float, seed: int) -> dict:
    """Write `out`: the truth made a coarse map's weak labels (see the module docstring); returns what was done."""
    import rasterio
    from affine import Affine
    from rasterio.warp import Resampling, calculate_default_transform, reproject
    from scipy.ndimage import gaussian_filter

    from lczmap.classes import oa_weights

    rng = np.random.default_rng(seed)
    with rasterio.open(truth) as src:
        codes, crs, transform, bounds = src.read(1), src.crs, src.transform, src.bounds
        width, height = src.width, src.height
    dst_transform, w, h = calculate_default_transform(crs, "EPSG:4326", width, height, *bounds, resolution=GLOBAL_MAP_CELL_DEG)
    coarse = np.zeros((h, w), np.uint8)
    reproject(codes, coarse, src_transform=transform, src_crs=crs, src_nodata=0, dst_transform=dst_transform,
              dst_crs="EPSG:4326", dst_nodata=0, resampling=Resampling.mode)
    dst_transform = dst_transform * Affine.translation(shift, shift)  # every cell half a cell east and south
    valid = coarse > 0
    present = np.unique(coarse[valid])
    weights = oa_weights()[np.ix_(present - 1, present - 1)] - np.eye(len(present))  # similarity to another present class
    confusable = dict(zip(present.tolist(), present[weights.argmax(axis=1)].tolist(), strict=True))
    cells = np.flatnonzero(valid)
    flipped = rng.choice(cells, size=round(flip * len(cells)), replace=False)
    labels = coarse.astype(np.int32)
    labels.flat[flipped] = [confusable[int(c)] for c in coarse.flat[flipped]]
    field = gaussian_filter(rng.standard_normal(labels.shape), 2.0)  # holes come in patches, as clouds and gaps do
    hole = valid & (field >= np.quantile(field[valid], 1 - holes))
    labels[~valid | hole] = LABEL_NODATA
    profile = {"driver": "GTiff", "width": w, "height": h, "count": 1, "dtype": "int32", "crs": "EPSG:4326",
               "transform": dst_transform, "nodata": LABEL_NODATA, "compress": "deflate"}
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(labels, 1)
        dst.set_band_description(1, "lcz")
    return {"cells": int(valid.sum()), "flipped": len(flipped), "holes": int(hole.sum()), "shift_cells": shift,
            "confusable": {str(k): v for k, v in confusable.items()}, "crs": "EPSG:4326", "cell_deg": GLOBAL_MAP_CELL_DEG}


def score(map_path: Path, truth: Path) -> dict:
    """OA, OA_bu, kappa (all cells) of a map against a truth raster, by `lczmap evaluate`."""
    report_path = map_path.with_suffix(".evaluation.json")
    lczmap("evaluate", "--map", str(map_path), "--reference", str(truth), "--bootstrap", "1", "--out", str(report_path))
    s = json.loads(report_path.read_text())["all_samples"]
    return {k: s[k] for k in ("oa", "oa_bu", "kappa", "n")}


def with_reference(city: Path, reference: Path, out: Path) -> Path:
    """Write `out`: a copy of `city` (paths made absolute) whose `reference:` is `reference`; returns `out`."""
    import yaml

    from lczmap.config import PATH_KEYS

    config = yaml.safe_load(city.read_text())
    for key in PATH_KEYS:
        if isinstance(config.get(key), str):
            config[key] = str((city.parent / config[key]).resolve())
    config["reference"] = str(reference.resolve())
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def train(name: str, work: Path, cities: list[Path], epochs: int, seed: int, extra: list[str]) -> dict:
    out = work / name
    seconds = lczmap("train", *(a for city in cities for a in ("--city", str(city))), "--network", "msmla18",
                     "--epochs", str(epochs), "--seed", str(seed), "--out", str(out), *extra)
    card = json.loads((out / "card.json").read_text())
    t = card["training"]
    counts = ("cells_in_aoi", "cells_with_class", "dropped_disagreeing", "dropped_by_cap", "kept")
    labels = {k: sum(city[k] for city in t["labels"]) for k in counts}
    return {"model": str(out), "train_seconds": round(seconds, 1), "n_train": t["n_train"], "n_validation": t["n_validation"],
            "split": t["split"], "epochs_run": t["epochs_run"], "best_epoch": t["best_epoch"],
            "validation_oa": card["metrics"]["validation"]["oa"], "labels": {"rules": t["labels"][0]["rules"], **labels}}


def held_out(model: str, city_b: Path, out: Path, truth_b: Path) -> dict:
    """Map the held-out city with `model` and score the map against its truth (the hook for any other model)."""
    seconds = lczmap("predict", "--config", str(city_b), "--model", model, "--out", str(out))
    return {**score(out, truth_b), "predict_seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--city-km", type=float, default=5.0, help="size of both demo cities")
    parser.add_argument("--scenes", type=int, default=1, help="Sentinel-2 scenes per demo city")
    parser.add_argument("--train-seed", type=int, action="append", default=None,
                        help="demo seed of a training city A; repeat for several [default: 31]")
    parser.add_argument("--test-seed", type=int, default=32, help="demo seed of the held-out city B")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="training and degradation seed")
    parser.add_argument("--flip", type=float, default=0.25, help="share of label cells changed to a confusable class")
    parser.add_argument("--holes", type=float, default=0.10, help="share of label cells set to nodata")
    parser.add_argument("--shift", type=float, default=0.5, help="label map shift in cells (east and south)")
    parser.add_argument("--init", default=None,
                        help="fine-tune both runs from this model (name or folder) instead of random weights; it is scored too")
    parser.add_argument("--extra-model", action="append", default=[],
                        help="also score this model (name or folder) on the held-out city, e.g. a Sentinel-2-only model")
    parser.add_argument("--hygiene", default="",
                        help='label hygiene options of both weak-label runs, e.g. "--min-agreement 6" [default: train\'s]')
    parser.add_argument("--work", type=Path, default=None, help="folder for models and maps [default: a new one in the cache]")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args()

    cities = CACHE / "weak-labels"
    train_seeds = args.train_seed or [31]
    cities_a = [demo_city(cities / f"A-{s}-{args.city_km:g}km-{args.scenes}", s, args.city_km, args.scenes) for s in train_seeds]
    city_b = demo_city(cities / f"B-{args.test_seed}-{args.city_km:g}km-{args.scenes}", args.test_seed, args.city_km, args.scenes)
    work = args.work or cities / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    work.mkdir(parents=True, exist_ok=True)
    truth_b = city_b.parent / "truth_lcz.tif"

    degradation, label_quality, weak_cities, clean_cities = {}, {}, [], []
    for i, (seed, city_a) in enumerate(zip(train_seeds, cities_a, strict=True)):
        truth_a, labels = city_a.parent / "truth_lcz.tif", work / ("labels.tif" if i == 0 else f"labels-{seed}.tif")
        degradation[seed] = degrade(truth_a, labels, args.flip, args.holes, args.shift, args.seed + i)
        label_quality[seed] = score(labels, truth_a)  # how weak the labels are, on A's own grid
        weak_cities.append(with_reference(city_a, labels, work / f"A-{seed}-weak.yaml"))
        clean_cities.append(with_reference(city_a, truth_a, work / f"A-{seed}-clean.yaml"))

    # The released MSMLA schedule divides the learning rate by 250 after epoch 5; a short run halves it instead.
    schedule = ["--lr-decay", "0.5", "--lr-step", str(max(1, args.epochs // 3))]
    common = [*schedule, *(["--init", args.init] if args.init else [])]
    hygiene = args.hygiene.split()
    weak = train("weak", work, weak_cities, args.epochs, args.seed, [*common, *hygiene])
    clean = train("clean", work, clean_cities, args.epochs, args.seed, [*common, "--min-agreement", "0"])
    s2_only = train("s2", work, weak_cities, args.epochs, args.seed, [*schedule, *hygiene, "--bands", ",".join(S2_BANDS)])
    for arm, name in ((weak, "weak"), (clean, "clean"), (s2_only, "s2")):
        arm.update(held_out(arm["model"], city_b, work / f"{name}.tif", truth_b))
    extra = {m: held_out(m, city_b, work / f"extra-{Path(m).name}.tif", truth_b) for m in [*args.extra_model, *filter(None, [args.init])]}

    result = {
        "benchmark": "weak_labels", "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "cities": {"train": [str(c) for c in cities_a], "held_out": str(city_b), "size_km": args.city_km, "scenes": args.scenes},
        "training": {"network": "msmla18", "epochs": args.epochs, "schedule": common, "init": args.init,
                     "weak_hygiene": hygiene or "train's defaults"},
        "degradation": degradation, "weak_labels_vs_truth": label_quality,
        "weak": weak, "clean": clean, "s2_only": s2_only, "extra_models": extra,
        "goal": {"weak_oa_at_least": GOAL_OA, "max_gap_to_clean": GOAL_GAP,
                 "gap": round(clean["oa"] - weak["oa"], 4),
                 "met": bool(weak["oa"] >= GOAL_OA and clean["oa"] - weak["oa"] <= GOAL_GAP)},
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
