"""Benchmark `lczmap batch`: three demo cities mapped one after another with predict_city (threaded) vs in one batch.

    python benchmarks/batch.py [--size-km 4] [--workers 2] [--model NAME_OR_DIR] [--keep DIR]

Both runs start cold (TensorFlow is imported and the model loaded in this process, or in each worker);
the batch time includes starting its LocalCluster. Without --model the shipped model is used, or a random-weights msmla18 when
none is installed yet (the timing is the same: the network's size, not its weights, sets it).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import yaml

CITIES = ("alpha", "beta", "gamma")


def random_model(folder: Path) -> Path:
    """An msmla18 model folder with random weights and the staged stack's 13 bands."""
    import keras

    from lczmap.card import ModelCard, write_card
    from lczmap.nets import build
    from lczmap.stage import BANDS

    folder.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    build("msmla18", (48, 48, len(BANDS))).save_weights(str(folder / "model.weights.h5"))
    write_card(ModelCard(name="random-msmla18", network="msmla18", input_shape=(48, 48, len(BANDS)), bands=BANDS,
                         mean=(0.0,) * len(BANDS), std=(0.1,) * 10 + (0.3, 10.0, 30.0)), folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-km", type=float, default=4.0, help="demo city size (default 4 km: 40 x 40 cells)")
    parser.add_argument("--workers", type=int, default=2, help="batch LocalCluster workers (default 2)")
    parser.add_argument("--model", default=None, help="model name or folder (default: shipped, else random weights)")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args()

    from lczmap.batch import load_pipeline, run_batch
    from lczmap.cluster import dask_client
    from lczmap.card import load_card
    from lczmap.config import load_city_config
    from lczmap.demo import generate
    from lczmap.errors import LczmapError
    from lczmap.predict import predict_city

    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        model = args.model
        if model is None:
            try:
                model = str(load_card().folder)
            except LczmapError:
                # built in a child process, so that this one starts as cold as the batch's workers
                child = multiprocessing.get_context("spawn").Process(target=random_model, args=(root / "random-model",))
                child.start()
                child.join()
                model = str(root / "random-model")
        configs = {n: generate(root / "cities" / n, seed=i, size_km=args.size_km) for i, n in enumerate(CITIES, 1)}

        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        for name, config in configs.items():
            (root / "sequential").mkdir(exist_ok=True)
            predict_city(load_city_config(config, name=name), root / "sequential" / f"{name}.tif", model=model,
                         progress=False)
        sequential = time.perf_counter() - t0

        pipeline = root / "pipeline.yaml"
        pipeline.write_text(yaml.safe_dump({
            "output_dir": "batch", "model": model,
            "cities": [{"name": n, "config": str(c)} for n, c in configs.items()],
        }))
        t0 = time.perf_counter()
        with dask_client(workers=args.workers) as client:
            started = time.perf_counter() - t0
            manifest = run_batch(load_pipeline(pipeline), client=client)
        batch = time.perf_counter() - t0

        same = True
        for name in CITIES:
            assert manifest["cities"][name]["status"] == "done", manifest["cities"][name]
            with rasterio.open(root / "sequential" / f"{name}.tif") as a, rasterio.open(root / "batch" / f"{name}.tif") as b:
                same &= bool(np.array_equal(a.read(1), b.read(1)))
        with rasterio.open(root / "batch" / f"{CITIES[0]}.tif") as ds:
            shape = ds.shape
        print(f"3 demo cities of {args.size_km:g} km ({shape[0]} x {shape[1]} cells each), model {load_card(model).name}, "
              f"{os.cpu_count()} cores, load average {load:.1f} at the start")
        print(f"sequential predict_city (threaded):  {sequential:7.1f} s")
        print(f"batch on {args.workers} workers (LocalCluster):  {batch:7.1f} s  (cluster start {started:.1f} s)")
        print(f"ratio sequential / batch:            {sequential / batch:7.2f}")
        print(f"same lcz maps both ways:             {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
