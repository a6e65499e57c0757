"""Benchmark `lczmap fetch` against local servers: how many bytes it reads compared with the compressed size of the
COG tiles its windows need (goal <= 1.5x), how many requests, seconds per source, and the same fetch from the cache.

    python benchmarks/fetch.py                          # a 12 km demo city (3 scenes), a 4 km AOI in it
    python benchmarks/fetch.py --size-km 8 --aoi-km 8 --json fetch.json
    python benchmarks/fetch.py --city /tmp/bench-city   # reuse a demo city made with `lczmap demo-data --catalog`

The servers are the tests' own (tests/servers.py): rustac's STAC API server and a Range-capable file server that
counts every body byte it sends. "needed" is the sum of the byte counts (from each COG's tile index) of the
full-resolution tiles that the fetched area touches, over the assets fetched; the rest of "read" is COG headers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import rasterio
from pyproj import Transformer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from servers import FileServer, StacApiServer  # noqa: E402

from lczmap.aoi import read_aoi  # noqa: E402
from lczmap.demo import generate  # noqa: E402
from lczmap.demo.catalog import write_catalog  # noqa: E402
from lczmap.fetch import FetchOptions, fetch_city  # noqa: E402
from lczmap.fetch.city import fetch_region  # noqa: E402
from lczmap.fetch.remote import CHUNK, covering_window  # noqa: E402
from lczmap.grid import city_grid, utm_crs  # noqa: E402

SOURCES = ("sentinel2", "dsm", "landcover")


def sub_aoi(city: Path, km: float, out: Path) -> Path:
    """A km x km square AOI centred on the demo city's AOI."""
    aoi = read_aoi(city / "aoi.geojson")
    crs = utm_crs(aoi)
    x, y = aoi.to_crs(crs).centroid.points[0]
    half = km * 500
    back = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    ring = [back.transform(x + dx * half, y + dy * half) for dx, dy in ((-1, -1), (1, -1), (1, 1), (-1, 1), (-1, -1))]
    out.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}]}))
    return out


def needed_bytes(path: Path, region) -> int:
    """Compressed bytes of the full-resolution tiles of COG `path` that `region` touches (its tile index)."""
    with rasterio.open(path) as src:
        bh, bw = src.block_shapes[0]
        win = covering_window(region.to_crs(src.crs.to_wkt()).boundingbox, src.transform)
        total = 0
        rows = range(max(0, int(win.row_off) // bh), min(src.height - 1, int(win.row_off + win.height) - 1) // bh + 1)
        cols = range(max(0, int(win.col_off) // bw), min(src.width - 1, int(win.col_off + win.width) - 1) // bw + 1)
        for r in rows:
            for c in cols:
                total += int(src.get_tag_item(f"BLOCK_SIZE_{c}_{r}", "TIFF", bidx=1) or 0)
    return total


def run(city: Path, aoi: Path, work: Path, threads: int) -> dict:
    catalog = city / "catalog"
    files = FileServer(catalog)
    api = StacApiServer(catalog, files.url, work / "api")
    cache = work / "cache"
    region = fetch_region(city_grid(read_aoi(aoi)))
    years = sorted({line.split('"datetime": "')[1][:4] for line in (catalog / "items.ndjson").read_text().splitlines()
                    if '"sentinel-2-l2a"' in line})
    out: dict = {"aoi_km2": round(read_aoi(aoi).to_crs(utm_crs(read_aoi(aoi))).area / 1e6, 2), "chunk_px": CHUNK,
                 "threads": threads, "sources": {}}
    try:
        for label, offline in (("first", False), ("cached", True)):
            for source in SOURCES:
                files.reset()
                options = FetchOptions(catalog=api.url, datetime=f"{years[0]}-01-01/{years[-1]}-12-31", max_cloud=100,
                                       sources=(source,), cache=cache, progress=False, threads=threads, offline=offline)
                t0 = time.perf_counter()
                fetch_city(aoi, work / f"city-{label}", options)
                seconds = time.perf_counter() - t0
                paths = {s.path for s in files.sent}
                need = sum(needed_bytes(catalog / p.lstrip("/"), region) for p in paths)
                read = files.bytes_sent()
                entry = out["sources"].setdefault(source, {})
                entry[label] = {"seconds": round(seconds, 3), "requests": len(files.sent), "assets": len(paths),
                                "bytes_read": read, "bytes_needed": need,
                                "read_over_needed": round(read / need, 3) if need else None}
    finally:
        api.stop()
        files.stop()
    first = [v["first"] for v in out["sources"].values()]
    out["total"] = {"bytes_read": sum(f["bytes_read"] for f in first), "bytes_needed": sum(f["bytes_needed"] for f in first),
                    "requests": sum(f["requests"] for f in first), "seconds": round(sum(f["seconds"] for f in first), 3),
                    "cached_seconds": round(sum(v["cached"]["seconds"] for v in out["sources"].values()), 3)}
    out["total"]["read_over_needed"] = round(out["total"]["bytes_read"] / max(out["total"]["bytes_needed"], 1), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--city", type=Path, default=None, help="A demo city with catalog/ (default: generate one).")
    parser.add_argument("--size-km", type=float, default=12.0, help="Size of the generated demo city.")
    parser.add_argument("--scenes", type=int, default=3, help="Sentinel-2 scenes of the generated city.")
    parser.add_argument("--aoi-km", type=float, default=4.0, help="Side of the square AOI fetched, in the city's centre.")
    parser.add_argument("--threads", type=int, default=16, help="Requests in flight.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results to this JSON file.")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lczmap-bench-fetch-"))
    try:
        city = args.city
        if city is None:
            city = work / "city"
            generate(city, seed=1, size_km=args.size_km, scenes=args.scenes)
            write_catalog(city)
        result = run(city, sub_aoi(city, args.aoi_km, work / "aoi.geojson"), work, args.threads)
        result.update(city_km=args.size_km if args.city is None else None, aoi_km=args.aoi_km)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
