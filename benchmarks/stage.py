"""Benchmark `lczmap stage`: wall time and peak memory for demo cities of growing size and growing numbers of
Sentinel-2 scenes (memory should stay flat in both; time should grow far less than the number of scenes).

    python benchmarks/stage.py                 # 3, 8, 16 km cities, one scene, in a temporary folder
    python benchmarks/stage.py --sizes 3 8 --cities /tmp/lcz-bench --workers 2
    python benchmarks/stage.py --sizes 8 --scenes 1,3,6 --json stage.json   # compositing cost: 3 and 6 vs 1 scene

Each city is generated first (not timed), then staged to Zarr by `lczmap stage` in a fresh child process,
which reports its own peak RSS (resource.getrusage) and the time spent staging after its imports.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def peak_rss_mb(usage: resource.struct_rusage) -> float:
    """This process's peak RSS. ru_maxrss survives exec, so it would count the parent's memory at fork
    (e.g. a large demo city generated in the parent); /proc's VmHWM starts afresh at exec."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024
    except (OSError, IndexError):
        return usage.ru_maxrss / 1024


def child(config: str, out: str, workers: int, chunk: int, cores: int | None, composite: str) -> None:
    """Runs in the fresh process: stage one city and print one JSON line."""
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
    t0 = time.perf_counter()
    from lczmap.cli import cli

    t1 = time.perf_counter()
    # --threads: the threaded scheduler in this process, so peak RSS and CPU time are all counted here
    cli.main(["-q", "stage", "--config", config, "--out", out, "--threads", str(workers), "--chunk", str(chunk),
              "--composite", composite], standalone_mode=False)
    t2 = time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    report = json.loads(Path(out + ".report.json").read_text())
    print(json.dumps({
        "import_s": t1 - t0,
        "stage_s": t2 - t1,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": peak_rss_mb(usage),
        "shape": report["grid"]["shape"],
        "buildings": report["sources"].get("osm", {}).get("buildings"),
        "valid_fraction": report["valid_fraction"],
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[3, 8, 16], help="city sizes in km")
    parser.add_argument("--cities", type=Path, default=None, help="keep generated cities here and reuse them")
    parser.add_argument("--workers", type=int, default=2, help="threads of the staging process")
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--cores", type=int, default=2, help="pin the child to this many CPU cores")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scenes", default="1", help="comma-separated numbers of Sentinel-2 scenes per city, e.g. 1,3,6")
    parser.add_argument("--composite", default="median", choices=["median", "best"])
    parser.add_argument("--repeat", type=int, default=2, help="stage each city this many times; the fastest run counts")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    parser.add_argument("--child", nargs=2, metavar=("CITY_YAML", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, workers=args.workers, chunk=args.chunk, cores=args.cores, composite=args.composite)
        return
    scenes = [int(n) for n in args.scenes.split(",")]

    from lczmap.demo import generate

    with tempfile.TemporaryDirectory(prefix="lczmap-bench-") as tmp:
        root = args.cities or Path(tmp)
        cities = {}
        for size in args.sizes:
            for n in scenes:
                folder = root / f"city-{size:g}km-seed{args.seed}" if n == 1 else root / f"city-{size:g}km-seed{args.seed}-{n}scenes"
                config = folder / "city.yaml"
                if not config.exists():
                    t = time.perf_counter()
                    config = generate(folder, seed=args.seed, size_km=size, scenes=n)
                    print(f"generated {size:g} km city with {n} scenes in {time.perf_counter() - t:.0f} s", file=sys.stderr)
                cities[(size, n)] = config
        runs: dict[tuple, list] = {key: [] for key in cities}
        # Rounds over all cities (not each city's runs back to back), so a busy spell on a shared machine hits every
        # city alike; the fastest run of each counts (the first run of a city also builds its OSM index cache).
        for k in range(args.repeat):
            for (size, n), config in cities.items():
                out = Path(tmp) / f"stack-{size:g}km-{n}-{k}.zarr"
                t = time.perf_counter()
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", str(config), str(out), "--workers", str(args.workers),
                     "--chunk", str(args.chunk), "--cores", str(args.cores), "--composite", args.composite],
                    capture_output=True, text=True,
                )
                wall = time.perf_counter() - t
                if proc.returncode != 0:
                    sys.exit(f"staging the {size:g} km city ({n} scenes) failed:\n{proc.stderr}")
                runs[(size, n)].append({"size_km": size, "scenes": n, "process_s": wall,
                                        **json.loads(proc.stdout.strip().splitlines()[-1])})
        rows = [min(r, key=lambda r: r["stage_s"]) for r in runs.values()]
        print(f"lczmap stage, chunk {args.chunk}, {args.workers} threads on {args.cores} cores, composite {args.composite}")
        print(f"{'city':>6} {'scenes':>6} {'base grid px':>14} {'buildings':>10} {'stage s':>8} {'process s':>10} {'CPU s':>7} "
              f"{'peak RSS MB':>12} {'valid':>6}")
        for r in rows:
            shape = f"{r['shape'][0]} x {r['shape'][1]}"
            print(f"{r['size_km']:>4g}km {r['scenes']:>6} {shape:>14} {r['buildings'] or 0:>10} {r['stage_s']:>8.1f} "
                  f"{r['process_s']:>10.1f} {r['cpu_s']:>7.1f} {r['peak_rss_mb']:>12.0f} {r['valid_fraction']:>6.3f}")
        ratios = {}
        for size in args.sizes:  # cost of compositing, as ratios measured in this one run
            base = next((r for r in rows if r["size_km"] == size and r["scenes"] == scenes[0]), None)
            for r in rows:
                if base and r["size_km"] == size and r is not base:
                    key = f"{size:g}km {r['scenes']} vs {base['scenes']} scenes"
                    ratios[key] = {"stage_s": round(r["stage_s"] / base["stage_s"], 2),
                                   "peak_rss_mb": round(r["peak_rss_mb"] / base["peak_rss_mb"], 2)}
                    print(f"{key}: staging time x{ratios[key]['stage_s']}, peak RSS x{ratios[key]['peak_rss_mb']}")
        if args.json:
            args.json.write_text(json.dumps({"chunk": args.chunk, "workers": args.workers, "cores": args.cores,
                                             "composite": args.composite, "rows": rows, "ratios": ratios}, indent=2) + "\n")

if __name__ == "__main__":
    main()
