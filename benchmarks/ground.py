"""Benchmark the derived height above ground (lczmap.ground) against lidar, and its speed.

    python benchmarks/ground.py                 # table on the terminal
    python benchmarks/ground.py --json ground.json --speed-px 1024

Validation site (the only one): Old Town Alexandria, Virginia, ../shared/realdata/elevation (lidar DSM, DTM and a
height-above-ground raster at 2 m, 84 building footprints; opengeos/data, MIT; see its PROVENANCE.md). The DSM is
averaged to 10 m (the staged grid) and to 30 m (the sampling of the Copernicus DEM GLO-30: lidar averaged to 30 m
stands in for it, the radar DEM itself is smoother and noisier), and the 30 m DSM is also brought to the 10 m grid
(bilinear) either before the filter (filtered at 10 m, as staging a 30 m DSM on its 10 m grid would) or after it
(filtered at 30 m, the height resampled). Height above ground is derived from each DSM alone and compared
cell by cell with the lidar reference averaged the same way:

- reference `dsm-dtm`: lidar DSM minus lidar DTM (the same acquisition as the DSM: what the filter should recover;
  inside the footprints it matches their HEIGHT attribute within 0.7 m RMSE);
- reference `hag-file`: the site's height-above-ground raster, from another acquisition (leaf-on canopy, some
  towers missing; 1.9 m above the footprints' HEIGHT on average), so its errors mix in the change between the two.

Cells are weighted by the share of their area that is of each kind (so 30 m cells, rarely wholly one kind, count
too): `buildings` = inside a footprint; `open ground` = no footprint within 10 m and reference height under 1 m
(2 m pixels); `all` = every cell with data, weight 1. Weighted RMSE and bias (derived minus reference) in metres;
`with_lidar_dtm` is the same score for the lidar DSM minus DTM sampled like the DSM, the floor that the sampling
leaves.
Speed: cells per second of `height_above_ground` on a synthetic --speed-px square DSM at 10 m, margin included.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from lczmap import ground

SITE = Path(__file__).resolve().parent.parent.parent / "shared" / "realdata" / "elevation"
BUFFER_M = 10.0
OPEN_MAX_M = 1.0


def _block_mean(a: np.ndarray, k: int) -> np.ndarray:
    """Mean of k x k blocks (NaN if any is NaN), the array cropped to whole blocks."""
    h, w = (n // k * k for n in a.shape)
    return a[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3))


def load_site(site: Path = SITE) -> dict[str, np.ndarray | float]:
    """The 2 m rasters (NaN = no data) and the footprint masks (inside, within BUFFER_M) on their grid."""
    import geopandas
    import rasterio
    from rasterio.features import rasterize

    def read(name: str) -> np.ndarray:
        with rasterio.open(site / f"alexandria_{name}.tif") as src:
            return src.read(1, masked=True).astype("float64").filled(np.nan)

    with rasterio.open(site / "alexandria_dsm.tif") as src:
        transform, crs, shape = src.transform, src.crs, src.shape
    footprints = geopandas.read_file(site / "alexandria_buildings.geojson").to_crs(crs).geometry
    burn = lambda geoms: rasterize(geoms, out_shape=shape, transform=transform, fill=0, default_value=1).astype(float)  # noqa: E731
    return {"dsm": read("dsm"), "dtm": read("dtm"), "hag": read("hag"), "pixel_m": float(transform.a),
            "inside": burn(footprints), "near": burn(footprints.buffer(BUFFER_M))}


def _upsample(a: np.ndarray, factor: int) -> np.ndarray:
    """Bilinear resampling onto a grid `factor` times finer (cell centres aligned as GDAL does)."""
    from scipy import ndimage

    h, w = a.shape
    rows = (np.arange(h * factor) + 0.5) / factor - 0.5
    cols = (np.arange(w * factor) + 0.5) / factor - 0.5
    return ndimage.map_coordinates(a, np.meshgrid(rows, cols, indexing="ij"), order=1, mode="nearest")


def _scores(derived: np.ndarray, reference: np.ndarray, weights: dict[str, np.ndarray]) -> dict:
    """Weighted RMSE and bias (derived - reference) per cell kind; `cells` is the sum of the weights."""
    out = {}
    for name, weight in weights.items():
        sel = np.isfinite(derived) & np.isfinite(reference) & (weight > 0)
        diff, w = derived[sel] - reference[sel], weight[sel]
        out[name] = {"cells": round(float(w.sum()), 1), "rmse_m": round(float(np.sqrt(np.average(diff**2, weights=w))), 2),
                     "bias_m": round(float(np.average(diff, weights=w)), 2),
                     "reference_mean_m": round(float(np.average(reference[sel], weights=w)), 2)}
    return out


# (label, DSM pixel m, grid the height is compared on (None: the DSM's), resampled before the filter (DSM) or after it)
SETTINGS = [("10 m DSM", 10, None, "dsm"), ("30 m DSM (GLO-30 sampling)", 30, None, "dsm"),
            ("30 m DSM, filtered at 10 m", 30, 10, "dsm"), ("30 m DSM, filtered at 30 m, height to 10 m", 30, 10, "height")]


def validate(site: dict, settings: list[tuple[str, int, int | None, str]] = SETTINGS) -> list[dict]:
    """RMSE and bias of the derived height per setting, reference and cell kind, and of the lidar DTM's height
    sampled the same way (`with_lidar_dtm`: the error that the sampling alone leaves, the floor for the filter)."""
    fine = site["pixel_m"]
    rows = []
    for label, res, staged, resampled in settings:
        k = round(res / fine)

        def sample(a: np.ndarray) -> np.ndarray:  # the fine raster as a `res` m DSM, on the compared grid
            coarse = _block_mean(a, k)
            return _upsample(coarse, res // staged) if staged else coarse

        pixel = float(staged or res)
        if resampled == "dsm":
            derived = ground.height_above_ground(sample(site["dsm"]), pixel, margin=0)
        else:
            derived = _upsample(ground.height_above_ground(_block_mean(site["dsm"], k), float(res), margin=0), res // staged)
        floor = np.maximum(sample(site["dsm"]) - sample(site["dtm"]), 0)
        h, w = derived.shape
        cut = lambda a: _block_mean(a, round(pixel / fine))[:h, :w]  # noqa: E731
        for ref_name, fine_ref in (("dsm-dtm", site["dsm"] - site["dtm"]), ("hag-file", site["hag"])):
            reference = cut(fine_ref)
            with np.errstate(invalid="ignore"):
                open_fine = ((site["near"] == 0) & (fine_ref < OPEN_MAX_M)).astype(float)
            weights = {"buildings": cut(site["inside"]), "open ground": cut(open_fine), "all": np.ones((h, w))}
            rows.append({"setting": label, "pixel_m": pixel, "reference": ref_name,
                         "derived": _scores(derived, reference, weights),
                         "with_lidar_dtm": _scores(floor[:h, :w], reference, weights)})
    return rows


def speed(pixels: int, seed: int = 0) -> dict:
    """Cells per second on a synthetic 10 m DSM: gentle terrain plus random boxes (buildings)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:pixels, 0:pixels] * 10.0
    dsm = 50 + 0.02 * xx + 5 * np.sin(yy / 900)
    for r, c, s, hgt in zip(*(rng.integers(0, pixels, 4 * pixels) for _ in range(2)), rng.integers(1, 6, 4 * pixels),
                            rng.uniform(3, 40, 4 * pixels), strict=True):
        dsm[r : r + s, c : c + s] += hgt
    m = ground.margin_pixels(10.0)
    padded = np.pad(dsm, m, constant_values=np.nan).astype("float32")
    start = time.perf_counter()
    ground.height_above_ground(padded, 10.0)
    seconds = time.perf_counter() - start
    return {"pixels": pixels * pixels, "pixel_m": 10.0, "margin_px": m, "seconds": round(seconds, 3),
            "cells_per_s": round(pixels * pixels / seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results to this JSON file")
    parser.add_argument("--speed-px", type=int, default=512, help="side of the synthetic DSM timed (10 m pixels)")
    args = parser.parse_args()
    result = {"site": "Old Town Alexandria, VA (lidar, opengeos/data)",
              "parameters": {"window_m": ground.WINDOW_M, "slope": ground.SLOPE,
                             "elevation_threshold_m": ground.ELEVATION_THRESHOLD_M, "spread": ground.SPREAD},
              "validation": validate(load_site()), "speed": speed(args.speed_px)}
    for row in result["validation"]:
        for kind in ("derived", "with_lidar_dtm"):
            cells = "  ".join(f"{c}: rmse {v['rmse_m']:5.2f} bias {v['bias_m']:+5.2f} (n={v['cells']:.0f})"
                              for c, v in row[kind].items())
            print(f"{row['setting']:<43} vs {row['reference']:<8} {kind:<14} {cells}")
    print(json.dumps(result["speed"]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
