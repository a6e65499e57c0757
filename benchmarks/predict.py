"""Benchmark `lczmap predict` against the network's and the decoder's own speed, on any backend and machine.

    python benchmarks/predict.py [--city-km 8] [--model msmla18-demo] [--batch-size 256|auto] [--json FILE]

Reports, for the demo city of --city-km (generated once into $LCZMAP_CACHE/bench, default ~/.cache/lczmap/bench):
- bare_patches_per_s: the bare model on random patches of one fixed batch shape (device-resident on an
  accelerator: the batch is put on the device once, as `predict` does with a block);
- inference_patches_per_s: lczmap's inference path (inference.prepare_block + infer_block, patches cut on the
  device on an accelerator, on the host otherwise) on blocks staged beforehand, model loaded and compiled;
- staging_cells_per_s: staging alone (prepare_block for every block on all cores, threads as predict runs them);
- cpus, decode_floor_cells_per_s: one core's time for GDAL alone to decode and resample every source over the
  city once (one warp per band file on the whole base grid) and to rasterise all its buildings once
  (GDALRasterizeLayers on the building index at 1 m), as output cells per second;
- end_to_end_cells_per_s: `predict_city` without generation (planning, staging, inference, writing), called in
  this process with the model already loaded, as a warm worker runs it;
- profile_one_core_seconds: where staging time goes, one core from cold files: seconds per source, for the AOI
  mask and for masking and normalising (the blocks as prepare_block makes them); `staging_speedup` is that serial
  time over staging's on all cores, `one_reader_per_file_bound` the most a file read by one thread at a time
  allows (the floor's total over its slowest raster file);
and the ratios the issue sets targets on: inference/bare, end-to-end cells/s x patches per cell / bare,
(staging/cpus)/decode floor. Each figure comes from this one run (the machine may be shared and noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CACHE = Path(os.environ.get("LCZMAP_CACHE") or Path.home() / ".cache" / "lczmap") / "bench"
SEED = 11  # not a training seed


def demo_city(size_km: float, scenes: int) -> Path:
    """city.yaml of a demo city of `size_km` with `scenes` Sentinel-2 products, generated once (in a child, so its
    memory is not ours)."""
    folder = CACHE / f"city-{size_km:g}km" if scenes == 1 else CACHE / f"city-{size_km:g}km-{scenes}scenes"
    if not (folder / "city.yaml").exists():
        print(f"generating a {size_km:g} km demo city into {folder} ...", flush=True)
        code = (f"from lczmap.demo import generate; "
                f"generate({str(folder)!r}, seed={SEED}, size_km={size_km}, scenes={scenes})")
        subprocess.run([sys.executable, "-c", code], check=True)
    return folder / "city.yaml"


def model_dir(name: str) -> str:
    """The named model, or a random msmla18 with 13 bands when it does not exist."""
    from lczmap.card import ModelCard, load_card, write_card
    from lczmap.errors import LczmapError

    try:
        load_card(name)
        return name
    except LczmapError:
        pass
    folder = CACHE / "random-msmla18"
    if not (folder / "card.json").exists():
        from lczmap.nets import build
        from lczmap.stage import BANDS

        print(f"model {name} not found: benchmarking a randomly initialised msmla18", flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        build("msmla18", (48, 48, len(BANDS))).save_weights(str(folder / "model.weights.h5"))
        card = ModelCard(name="random-msmla18", network="msmla18", input_shape=(48, 48, len(BANDS)), bands=BANDS,
                         mean=(0.08,) * 10 + (0.1, 5.0, 40.0), std=(0.05,) * 10 + (0.2, 5.0, 20.0))
        write_card(card, folder)
    return str(folder)


def bare(plan, seconds: float) -> float:
    """Patches/s of the bare model on one random batch of the plan's size (on the device when there is one)."""
    import keras
    import numpy as np

    from lczmap.inference import accelerator, plan_model

    model, _ = plan_model(plan)
    x = np.random.default_rng(0).normal(size=(plan.batch_size, *plan.card.input_shape)).astype("float32")
    if accelerator() is not None:
        x = keras.ops.convert_to_tensor(x)
    model.predict_on_batch(x)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        model.predict_on_batch(x)
        done += plan.batch_size
    return done / (time.perf_counter() - t0)


def profile(plan) -> dict[str, float]:
    """One core, every block through prepare_block from cold files (no decoded block cached): seconds per source read
    (summed over the blocks), for the AOI mask, and for masking, cutting and normalising (tiling.BlockPatches);
    `cpu` is the process's CPU seconds meanwhile."""
    import rasterio

    from lczmap.inference import prepare_block
    from lczmap.sources.base import close_datasets

    close_datasets()
    seconds: dict[str, float] = {}
    cpu0 = time.process_time()
    with rasterio.Env(GDAL_NUM_THREADS="1"):  # one core, as the floor
        for rows, cols in plan.grid.output_blocks(plan.block):
            prepare_block(plan, rows, cols, seconds=seconds)
    seconds["cpu"] = time.process_time() - cpu0
    close_datasets()  # staging after this starts cold too
    return {k: round(v, 3) for k, v in seconds.items()}


def staging(plan) -> tuple[list, float]:
    """Every block prepared (read, masked, normalised) on all cores; the blocks and the seconds."""
    from lczmap.inference import prepare_block

    blocks = plan.grid.output_blocks(plan.block)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        prepared = list(pool.map(lambda rc: prepare_block(plan, *rc), blocks))
    return prepared, time.perf_counter() - t0


def inference(plan, prepared: list) -> tuple[int, float]:
    """Patches and seconds of lczmap's inference path on staged blocks (the first block run once to compile)."""
    from lczmap.inference import infer_block

    first = next(p for p in prepared if p.patches is not None)
    infer_block(plan, first)
    t0 = time.perf_counter()
    patches = 0
    for p in prepared:
        infer_block(plan, p)
        patches += len(p.patches) if p.patches is not None else 0
    return patches, time.perf_counter() - t0


def decode_floor(plan) -> dict[str, float]:
    """One core's seconds for GDAL alone, per file: every source band file opened afresh (so decoded) and warped once
    over the whole base grid, and every building burnt once at 1 m."""
    import rasterio

    with rasterio.Env(GDAL_NUM_THREADS="1"):  # one core: GDAL's JPEG 2000 decoder otherwise uses every core
        return _decode_once(plan, plan.grid.base)


def _decode_once(plan, box) -> dict[str, float]:
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    from lczmap.sources.base import WARP_TOLERANCE
    from lczmap.sources.osm import INDEX_LAYER, SUPERSAMPLE, burn_layer

    seconds: dict[str, float] = {}
    for source in plan.stage.sources:
        t0 = time.perf_counter()
        if source.key == "osm":
            burn_layer(source.index, INDEX_LAYER, box, SUPERSAMPLE)
            seconds[Path(source.index).name] = time.perf_counter() - t0
            continue
        for href in source.files():
            if not href.lower().endswith((".jp2", ".tif", ".tiff")):
                continue
            nearest = source.key == "landcover" or "SCL" in Path(href).name
            t0 = time.perf_counter()
            with rasterio.open(href) as src, WarpedVRT(
                src, crs=box.crs.wkt, transform=box.affine, width=box.shape[1], height=box.shape[0],
                resampling=Resampling.nearest if nearest else Resampling.bilinear, tolerance=WARP_TOLERANCE,
            ) as vrt:
                vrt.read(1)
            seconds[Path(href).name] = time.perf_counter() - t0
    return seconds


def end_to_end(city: Path, model: str, batch: int | str, precision: str) -> dict:
    """predict_city in this process, as in a warm worker (model loaded, backend started): plan, staging, inference,
    writing; generation, interpreter start and imports excluded."""
    from lczmap.config import load_city_config
    from lczmap.predict import predict_city

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = predict_city(load_city_config(city), Path(tmp) / "lcz.tif", model=model, batch_size=batch,
                               progress=False, precision=precision)
        return {"seconds": time.perf_counter() - t0, "stages": summary["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="msmla18-demo")
    parser.add_argument("--batch-size", default="256", help="patches per model call, or auto")
    parser.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--city-km", type=float, default=8.0)
    parser.add_argument("--scenes", type=int, default=1, help="Sentinel-2 products of the demo city (composited)")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of the bare-model measurement")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args()

    from lczmap.config import load_city_config
    from lczmap.inference import device_description
    from lczmap.predict import plan_city

    model = model_dir(args.model)
    city = demo_city(args.city_km, args.scenes)
    batch = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    plan = plan_city(load_city_config(city), model, batch_size=batch, precision=args.precision)
    cells = int(plan.aoi_mask.sum())
    print(f"{device_description()}; {args.city_km:g} km city, {cells} cells in the AOI, batch {plan.batch_size}, "
          f"{args.precision}", flush=True)
    profile_s = profile(plan)
    prepared, staging_s = staging(plan)
    a1 = bare(plan, args.seconds / 2)
    patches, inference_s = inference(plan, prepared)
    a2 = bare(plan, args.seconds / 2)
    bare_rate = (a1 + a2) / 2  # before and after, so that drifting load affects both alike
    del prepared
    floor_files = decode_floor(plan)
    floor_s = sum(floor_files.values())
    # raster files are read by one thread at a time (one handle each, so each tile is decoded once per process);
    # the building index is opened per block
    slowest = max((f for f in floor_files if not f.endswith(".gpkg")), key=floor_files.get)
    e2e = end_to_end(city, model, batch, args.precision)
    cpus = os.cpu_count() or 1
    results = {
        "device": device_description(), "city_km": args.city_km, "scenes": args.scenes, "cells": cells, "patches": patches,
        "batch_size": plan.batch_size, "precision": args.precision, "cpus": cpus,
        "bare_patches_per_s": round(bare_rate, 1),
        "inference_patches_per_s": round(patches / inference_s, 1),
        "staging_cells_per_s": round(cells / staging_s, 1),
        "decode_floor_cells_per_s": round(cells / floor_s, 1),
        "end_to_end_cells_per_s": round(cells / e2e["seconds"], 1),
        "end_to_end_seconds": round(e2e["seconds"], 2), "end_to_end_stages": e2e["stages"],
        "profile_one_core_seconds": profile_s, "staging_seconds": round(staging_s, 3),
        "decode_floor_seconds": round(floor_s, 3),
        "decode_floor_slowest_raster": slowest, "decode_floor_slowest_raster_seconds": round(floor_files[slowest], 3),
    }
    patches_per_cell = patches / cells
    results["ratios"] = {
        "inference/bare": round(results["inference_patches_per_s"] / bare_rate, 3),
        "end_to_end/bare": round(results["end_to_end_cells_per_s"] * patches_per_cell / bare_rate, 3),
        "staging_per_cpu/decode_floor": round(results["staging_cells_per_s"] / cpus / results["decode_floor_cells_per_s"], 3),
        # how far staging on all cores gains over one thread, and the most that one reader per file at a time allows
        "staging_speedup": round(sum(v for k, v in profile_s.items() if k != "cpu") / staging_s, 3),
        "one_reader_per_file_bound": round(floor_s / floor_files[slowest], 3),
    }
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
