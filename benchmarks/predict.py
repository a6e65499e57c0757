"""Benchmark `lczmap predict`: bare model throughput vs the pipeline's inference stage, and peak memory vs city size.

    python benchmarks/predict.py [--model msmla18-demo] [--batch-size 256] [--city-km 8] [--sizes 3 8 16]

(a) the bare model on random patches of the model's shape and the batch size: model.predict(x, batch_size)
    (the target's reference) and a predict_on_batch loop, in patches/s;
(b) the staging+inference stage of predict (threaded scheduler, model already loaded) on a demo city, in
    mapped patches/s; target (b)/(a) >= 0.8;
(c) peak RSS of a child process running the whole `predict_city` for demo cities of each size; target:
    growing by at most 30 % from the smallest to the largest.
Demo cities are generated once into $LCZMAP_CACHE/bench (default ~/.cache/lczmap/bench). Without the
named model (e.g. before models/msmla18-demo exists) a randomly initialised msmla18 is used.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CACHE = Path(os.environ.get("LCZMAP_CACHE") or Path.home() / ".cache" / "lczmap") / "bench"
SEED = 11  # not a training seed


def demo_city(size_km: float) -> Path:
    """city.yaml of a demo city of `size_km`, generated once (in a child, so its memory is not ours)."""
    folder = CACHE / f"city-{size_km:g}km"
    if not (folder / "city.yaml").exists():
        print(f"generating a {size_km:g} km demo city into {folder} ...", flush=True)
        code = f"from lczmap.demo import generate; generate({str(folder)!r}, seed={SEED}, size_km={size_km})"
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


def bare_throughput(model: str, batch_size: int, seconds: float = 20.0) -> dict[str, float]:
    """(a) patches/s of the bare model on random patches: model.predict(x, batch_size) and a predict_on_batch loop."""
    import numpy as np

    from lczmap.card import load_card
    from lczmap.inference import cached_model

    card = load_card(model)
    net, _ = cached_model(card)
    x = np.random.default_rng(0).normal(size=(8 * batch_size, *card.input_shape)).astype("float32")
    net.predict(x[:batch_size], batch_size=batch_size, verbose=0)
    net.predict_on_batch(x[:batch_size])
    out = {}
    for name, call, n in (("predict", lambda: net.predict(x, batch_size=batch_size, verbose=0), len(x)),
                          ("predict_on_batch", lambda: net.predict_on_batch(x[:batch_size]), batch_size)):
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 2:
            call()
            done += n
        out[name] = done / (time.perf_counter() - t0)
    return out


def pipeline_throughput(model: str, batch_size: int, city_km: float) -> dict[str, float]:
    """(b) mapped patches/s of the staging+inference stage (model loaded and traced beforehand, as in a warm worker)."""
    import numpy as np

    from lczmap.config import load_city_config
    from lczmap.inference import cached_model
    from lczmap.predict import compute_probabilities, plan_city

    plan = plan_city(load_city_config(demo_city(city_km)), model, batch_size=batch_size)
    net, _ = cached_model(plan.card)
    net.predict_on_batch(np.zeros((batch_size, *plan.card.input_shape), "float32"))
    t0 = time.perf_counter()
    probs = compute_probabilities(plan, progress=False)
    seconds = time.perf_counter() - t0
    patches = int((~np.isnan(probs[0])).sum())
    return {"patches": patches, "seconds": round(seconds, 2), "patches_per_s": patches / seconds}


CHILD = """
import json, sys, time
from pathlib import Path
from lczmap.config import load_city_config
from lczmap.predict import predict_city
t0 = time.perf_counter()
s = predict_city(load_city_config(sys.argv[1]), sys.argv[2], model=sys.argv[3], progress=False)
# VmHWM: this process's own peak RSS (ru_maxrss would also count the parent's RSS inherited at fork)
hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM"))
print(json.dumps({"peak_rss_mb": int(hwm.split()[1]) / 1024, "seconds": round(time.perf_counter() - t0, 1),
                  "cells": s["grid"]["shape"]}))
"""


def peak_memory(model: str, size_km: float) -> dict[str, float]:
    """(c) peak RSS (MB) of a fresh process mapping a demo city of `size_km` with predict_city."""
    city = demo_city(size_km)
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-c", CHILD, str(city), str(Path(tmp) / "lcz.tif"), model],
                              check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="msmla18-demo")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--city-km", type=float, default=8.0, help="demo city size for (b)")
    parser.add_argument("--sizes", type=float, nargs="*", default=[3, 8, 16], help="demo city sizes for (c); none: skip (c)")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of (a)")
    args = parser.parse_args()

    model = model_dir(args.model)
    results: dict[str, object] = {"model": model, "batch_size": args.batch_size, "cpus": os.cpu_count()}
    for size in args.sizes:  # generate every city first, so generation does not disturb the timings
        demo_city(size)
    # (a) is measured before and after (b) and averaged, so that drifting machine load affects both alike.
    a1 = bare_throughput(model, args.batch_size, args.seconds / 2)
    b = pipeline_throughput(model, args.batch_size, args.city_km)
    a2 = bare_throughput(model, args.batch_size, args.seconds / 2)
    a = {k: (a1[k] + a2[k]) / 2 for k in a1}
    print(f"(a) bare model: model.predict {a['predict']:.0f} patches/s, predict_on_batch {a['predict_on_batch']:.0f} "
          f"patches/s (batch {args.batch_size})", flush=True)
    print(f"(b) predict inference stage, {args.city_km:g} km city: {b['patches_per_s']:.0f} patches/s "
          f"({b['patches']} patches in {b['seconds']} s); (b)/(a) = {b['patches_per_s'] / a['predict']:.2f} vs "
          f"model.predict (target >= 0.8), {b['patches_per_s'] / a['predict_on_batch']:.2f} vs predict_on_batch", flush=True)
    results.update(bare_patches_per_s=a, pipeline=b, ratio=b["patches_per_s"] / a["predict"],
                   ratio_vs_predict_on_batch=b["patches_per_s"] / a["predict_on_batch"])
    if not args.sizes:
        print(json.dumps(results, indent=2))
        return
    memory = {}
    for size in args.sizes:
        memory[f"{size:g}km"] = m = peak_memory(model, size)
        print(f"(c) {size:g} km city ({m['cells'][0]} x {m['cells'][1]} cells): peak RSS {m['peak_rss_mb']:.0f} MB, "
              f"{m['seconds']} s", flush=True)
    first, last = memory[f"{args.sizes[0]:g}km"], memory[f"{args.sizes[-1]:g}km"]
    growth = last["peak_rss_mb"] / first["peak_rss_mb"] - 1
    print(f"(c) peak memory growth {args.sizes[0]:g} -> {args.sizes[-1]:g} km: {growth:+.0%} (target <= +30%)")
    results.update(memory=memory, memory_growth=growth)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
