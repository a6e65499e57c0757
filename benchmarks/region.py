"""Benchmark regions on a dask.distributed cluster: client and worker peak memory for a 16 km and a 64 km region,
seams (one grid vs four tiles), and throughput by number of worker processes.

    python benchmarks/region.py                       # everything, in a temporary folder
    python benchmarks/region.py --work /tmp/region-bench --json region.json
    python benchmarks/region.py --scaling-only --workers 1,2,4,8,16 --scaling-km 32   # throughput on a bigger machine

Inputs: a 4 km demo city is generated once; its Sentinel-2 bands are converted to tiled GeoTIFFs and repeated on a
grid by per-band VRTs (no pixel copies), so the region's AOI of any size has real L2A files under it. The model is a
narrow MSMLA-18 with random weights on 16 x 16 patches of the ten Sentinel-2 bands (what is measured is the pipeline around the network).
Each region is mapped by `lczmap.region.map_region` from a fresh client process that only talks to the cluster (it
loads no model and reads no pixels), whose own peak RSS (VmHWM) is reported; worker peaks come from the workers after
a restart of the cluster before each region. The seam check maps the demo city with the shipped model twice: as one
grid and as a region of four tiles. Throughput is output cells per second of the --scaling-km region (tiles of
--scaling-tile-km) on a fresh cluster of each --workers number of single-threaded worker processes, the backend
(TensorFlow or XLA) on one thread in each, after every worker has mapped one small tile (model loaded, first calls
compiled).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BAND_FILES = {"B02": "B02_10m", "B03": "B03_10m", "B04": "B04_10m", "B08": "B08_10m", "B05": "B05_20m",
              "B06": "B06_20m", "B07": "B07_20m", "B8A": "B8A_20m", "B11": "B11_20m", "B12": "B12_20m", "SCL": "SCL_20m"}


def vmhwm_mb() -> float:
    """This process's peak RSS since exec (ru_maxrss would count the parent's memory at fork)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


# ---- inputs --------------------------------------------------------------------------------------

def prepare(work: Path, sizes_km: set[float]) -> dict:
    """Demo city, repeated Sentinel-2 bands covering the largest size plus margins, AOIs and city.yaml files of each
    size, and the model."""
    import rasterio
    import shapely
    from odc.geo.geom import Geometry

    from lczmap.demo import generate

    city = work / "city"
    if not (city / "city.yaml").exists():
        generate(city, seed=3, size_km=4)
    safe = next(city.glob("*.SAFE"))
    s2 = work / "s2"
    s2.mkdir(exist_ok=True)
    (s2 / "MTD_MSIL2A.xml").write_bytes((safe / "MTD_MSIL2A.xml").read_bytes())
    origin = None
    for band, token in BAND_FILES.items():
        (jp2,) = safe.glob(f"GRANULE/*/IMG_DATA/R{token[-3:]}/*_{token}.jp2")
        tif = work / "bands" / f"{band}.tif"
        tif.parent.mkdir(exist_ok=True)
        if not tif.exists():  # decode the JP2 once; the VRTs read the tiled GeoTIFF by window
            with rasterio.open(jp2) as src:
                profile = src.profile | {"driver": "GTiff", "tiled": True, "blockxsize": 256, "blockysize": 256,
                                         "compress": "deflate"}
                with rasterio.open(tif, "w", **profile) as dst:
                    dst.write(src.read())
        with rasterio.open(tif) as src:
            w, h, t, crs, dtype, nodata = src.width, src.height, src.transform, src.crs, src.dtypes[0], src.nodata
        if origin is None:
            origin = (t.c, t.f, w * t.a, crs)
        n = math.ceil((max(sizes_km) * 1000 + 4000) / (w * t.a))
        sources = "".join(
            f'<SimpleSource><SourceFilename relativeToVRT="1">../bands/{band}.tif</SourceFilename><SourceBand>1</SourceBand>'
            f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/><DstRect xOff="{i * w}" yOff="{j * h}" xSize="{w}" ySize="{h}"/>'
            f"</SimpleSource>" for i in range(n) for j in range(n))
        nd = f"<NoDataValue>{nodata:g}</NoDataValue>" if nodata is not None else ""
        (s2 / f"{band}.vrt").write_text(
            f'<VRTDataset rasterXSize="{n * w}" rasterYSize="{n * h}"><SRS>{crs.to_wkt()}</SRS>'
            f"<GeoTransform>{t.c!r}, {t.a!r}, 0.0, {t.f!r}, 0.0, {t.e!r}</GeoTransform>"
            f'<VRTRasterBand dataType="{ {"uint16": "UInt16", "uint8": "Byte"}[dtype] }" band="1">{nd}{sources}'
            f"</VRTRasterBand></VRTDataset>\n")
    x0, y0, _, crs = origin
    configs = {}
    for km in sorted(sizes_km):
        aoi = Geometry(shapely.box(x0 + 2000, y0 - 2000 - km * 1000, x0 + 2000 + km * 1000, y0 - 2000), crs)
        path = work / f"aoi{km:g}.geojson"
        path.write_text(json.dumps({"type": "FeatureCollection", "features": [
            {"type": "Feature", "properties": {}, "geometry": aoi.to_crs("EPSG:4326").json}]}))
        (work / f"region{km:g}.yaml").write_text(f"name: region{km:g}\naoi: {path.name}\nsentinel2: s2\n")
        configs[km] = work / f"region{km:g}.yaml"
    model = work / "model"
    if not (model / "card.json").exists():
        subprocess.run([sys.executable, __file__, "--make-model", str(model)], check=True)
    return {"city": city / "city.yaml", "configs": configs, "model": model}


def make_model(folder: Path) -> None:
    """MSMLA-18 (narrow, 16 x 16 patches) with random weights on the ten Sentinel-2 bands, and its card.

    A tenth of the 48 x 48 network's cost, so that the run measures the pipeline around the network in minutes."""
    import keras

    from lczmap.card import ModelCard, write_card
    from lczmap.nets import build
    from lczmap.stage import S2_BANDS

    keras.utils.set_random_seed(0)
    options = {"widths": [8, 16, 32]}
    folder.mkdir(parents=True, exist_ok=True)
    build("msmla18", (16, 16, len(S2_BANDS)), **options).save_weights(str(folder / "model.weights.h5"))
    write_card(ModelCard(name="bench-s2", network="msmla18", input_shape=(16, 16, len(S2_BANDS)), bands=S2_BANDS,
                         mean=(0.1,) * len(S2_BANDS), std=(0.05,) * len(S2_BANDS), network_options=options), folder)


# ---- one region from a fresh client process ----------------------------------------------------------

def client_run(scheduler: str, config: str, out: str, model: str, tile_km: float) -> None:
    """Runs in a fresh process: map one region on the cluster at `scheduler`, print one JSON line."""
    from lczmap.config import load_city_config
    from lczmap.region import map_region, plan_region

    t0 = time.perf_counter()
    plan = plan_region(load_city_config(config), out, model=model, tile_km=tile_km)
    summary = map_region(plan, scheduler=scheduler, progress=False)
    print(json.dumps({"seconds": time.perf_counter() - t0, "tiles": summary["tiles"],
                      "mapped_km2": summary["mapped_km2"], "client_peak_rss_mb": vmhwm_mb(),
                      "tensorflow_loaded": "tensorflow" in sys.modules}))


def worker_peaks(client) -> list[float]:
    return sorted(client.run(vmhwm_mb).values())


def warm(client, config: Path | None = None, model: Path | None = None, work: Path | None = None) -> None:
    """Import TensorFlow/Keras on every worker; given a region, also map one small tile on every worker (model load,
    first compilation, the writers' imports), so throughput compares mapping, not start-up."""
    client.run(lambda: __import__("keras") and None)
    if config is None:
        return
    from lczmap.config import load_city_config
    from lczmap.region import plan_region

    plan = plan_region(load_city_config(config), work / "warm.tif", model=str(model), tile_km=2)
    client.run(_warm_tile, plan.spec, plan.tiles[0])


def _warm_tile(spec, tile) -> None:
    from dataclasses import replace

    from lczmap.region import map_tile

    map_tile(replace(spec, work=spec.work / str(os.getpid())), tile)  # a folder per worker: each maps it itself


def map_on(client, config: Path, out: Path, model: Path, tile_km: float) -> dict:
    shutil.rmtree(out.with_name(f"{out.stem}.tiles"), ignore_errors=True)  # an earlier run's tiles would be reused
    cmd = [sys.executable, __file__, "--client", client.scheduler.address, str(config), str(out), str(model), str(tile_km)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def seam_agreement(city_yaml: Path, work: Path) -> float:
    """Share of mapped cells whose lczFilter is the same when the demo city is mapped as one grid and as four tiles."""
    import rasterio

    from lczmap.card import DEFAULT_MODEL
    from lczmap.config import load_city_config
    from lczmap.outputs import output_paths
    from lczmap.predict import predict_city
    from lczmap.region import map_region, plan_region, plan_tiles
    from lczmap.aoi import read_aoi

    config = load_city_config(city_yaml)
    shutil.rmtree(work / "seam", ignore_errors=True)
    one = work / "seam" / "one.tif"
    one.parent.mkdir()
    predict_city(config, one, progress=False)
    three = output_paths(one).get("lcz3", one)
    three = three if three.exists() else one
    with rasterio.open(three) as ds:
        epsg, single = ds.crs.to_epsg(), ds.read()
        bounds = ds.bounds
    km = next(k for k in (4.0, 4.5, 5.0, 3.5, 3.0) if len(plan_tiles(read_aoi(config.aoi), k)) == 4)
    plan = plan_region(config, work / "seam" / "four.tif", model=DEFAULT_MODEL, crs=f"EPSG:{epsg}", tile_km=km)
    map_region(plan, progress=False)
    with rasterio.open(output_paths(work / "seam" / "four.tif")["lcz3"]) as ds:
        tiled = ds.read(window=ds.window(*bounds).round_offsets().round_lengths(), boundless=True, fill_value=0)
    mapped = single[0] != 0
    band = 1  # lczFilter
    return float((tiled[band][mapped] == single[band][mapped]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="folder for inputs and outputs (default: a temporary one)")
    parser.add_argument("--region-km", type=float, default=64.0)
    parser.add_argument("--tile-km", type=float, default=32.0)
    parser.add_argument("--workers", default="1,2", help="worker processes to measure throughput with (comma-separated)")
    parser.add_argument("--scaling-km", type=float, default=16.0, help="the throughput region's size")
    parser.add_argument("--scaling-tile-km", type=float, default=8.0, help="the throughput region's tile size")
    parser.add_argument("--scaling-only", action="store_true", help="only the throughput (no memory or seam runs)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    workers = [int(n) for n in args.workers.split(",")]
    from lczmap.cluster import dask_client

    work = args.work or Path(tempfile.mkdtemp(prefix="lczmap-region-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    memory_sizes = set() if args.scaling_only else {16.0, args.region_km}
    inputs = prepare(work, memory_sizes | {args.scaling_km})
    results: dict = {"cpus": os.cpu_count(), "client_peak_rss_mb": {}, "worker_peak_rss_mb": {}, "seconds": {},
                     "tiles": {}, "cells_per_s": {}}
    with dask_client(workers=2) as client:
        for km, config in ((k, inputs["configs"][k]) for k in sorted(memory_sizes)):
            client.restart()  # fresh worker processes: their VmHWM is this region's
            warm(client)
            run = map_on(client, config, work / f"region{km:g}.tif", inputs["model"], args.tile_km)
            label = f"{km:g}km"
            # lczmap.card checks a card's network options against the builders, which imports Keras (no model)
            results["client_imported_tensorflow"] = run["tensorflow_loaded"]
            results["client_peak_rss_mb"][label] = round(run["client_peak_rss_mb"], 1)
            results["worker_peak_rss_mb"][label] = round(max(worker_peaks(client)), 1)
            results["seconds"][label] = round(run["seconds"], 1)
            results["tiles"][label] = run["tiles"]
            print(f"{label}: {run['tiles']} tiles in {run['seconds']:.1f} s, client {run['client_peak_rss_mb']:.0f} MB, "
                  f"workers {worker_peaks(client)} MB", flush=True)
    cells = round(args.scaling_km * 10) ** 2  # the throughput region's output cells
    # One core per worker process for the backend too (by default a lone worker's TensorFlow or XLA takes every
    # core), so that the count of processes is the count of cores used, as scaling means it.
    os.environ["TF_NUM_INTRAOP_THREADS"] = "1"
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    config = inputs["configs"][args.scaling_km]
    for n in workers:
        with dask_client(workers=n) as client:
            warm(client, config, inputs["model"], work)
            run = map_on(client, config, work / f"throughput{n}.tif", inputs["model"], args.scaling_tile_km)
        results["cells_per_s"][str(n)] = round(cells / run["seconds"], 1)
        print(f"{n} worker(s): {cells / run['seconds']:.0f} cells/s ({run['tiles']} tiles of {args.scaling_tile_km:g} km)",
              flush=True)
    results["scaling_vs_1"] = {n: round(v / results["cells_per_s"][str(workers[0])], 3) for n, v in results["cells_per_s"].items()}
    if args.scaling_only:
        print(json.dumps(results, indent=2))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
        return
    results["seam_agreement"] = round(seam_agreement(inputs["city"], work), 5)
    labels = list(results["client_peak_rss_mb"])
    big, small = labels[-1], labels[0]
    results["client_ratio"] = round(results["client_peak_rss_mb"][big] / results["client_peak_rss_mb"][small], 3)
    print()
    print(f"| measure | {' | '.join(labels)} |")
    print(f"|---|{'---:|' * len(labels)}")
    for key in ("client_peak_rss_mb", "worker_peak_rss_mb", "seconds", "tiles"):
        print(f"| {key} | {' | '.join(str(results[key][k]) for k in labels)} |")
    print(f"client {big}/{small}: {results['client_ratio']}; cells/s by workers {results['cells_per_s']} "
          f"(x{results['scaling_vs_1']}); seam agreement {results['seam_agreement']:.4%}; cores: {os.cpu_count()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_run(*sys.argv[2:6], float(sys.argv[6]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--make-model":
        make_model(Path(sys.argv[2]))
    else:
        main()
