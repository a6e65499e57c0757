"""Several products as one source: each block composited per pixel (median, or the least cloudy product's
observation) from the products' SCL-clear observations, products of one day fused into one observation, in
row strips whose memory does not grow with the number of products."""

from __future__ import annotations

from typing import Any

import numpy as np
from odc.geo.geobox import GeoBox
from rasterio.enums import Resampling
from rasterio.features import rasterize

from ..base import Source, warp
from .bands import S2_BANDS, SCL_CLOUD
from .product import Sentinel2Source

COMPOSITES = ("median", "best")
# Bytes of observations one block may hold at once: a block is composited in row strips of this size, so its
# memory does not grow with the number of products. Per pixel and observation: the ten bands, their sorted copy
# (median) and the index and validity of the product that supplied it.
STRIP_BUDGET_BYTES = 48 << 20
_BYTES_PER_OBSERVATION = 2 * len(S2_BANDS) * 4 + 3
PREVIEW_FACTOR = 6  # the plan-time cloud ranking reads each SCL on a 60 m version of the base grid


def preview_products(products: list[Sentinel2Source], grid: Any, masked: tuple[int, ...]) -> dict[str, dict[str, Any]]:
    """Each product's data and cloud share over the AOI, from its SCL on a 60 m version of the base grid."""
    box60 = grid.base.zoom_out(PREVIEW_FACTOR)
    aoi = rasterize([grid.aoi.geom], out_shape=box60.shape, transform=box60.affine, fill=0, default_value=1,
                    dtype="uint8") == 1
    out = {}
    for p in products:
        if p.scl is not None:
            scl = warp(p.scl.href, [p.scl.index], box60, Resampling.nearest, "uint8", src_nodata=0, dst_nodata=0)[0]
            data, cloud = scl != 0, np.isin(scl, masked) & (scl != 0)
        else:
            ref = p.refs["B02"]
            data = np.isfinite(warp(ref.href, [ref.index], box60, Resampling.nearest, "float32", src_nodata=ref.nodata)[0])
            cloud = np.zeros_like(data)
        n = int((data & aoi).sum())
        out[p.path] = {
            "aoi_px": int(aoi.sum()),
            "aoi_data_px": n,
            "data_share": round(n / max(int(aoi.sum()), 1), 4),
            "cloud_share": round(int((cloud & aoi).sum()) / n, 4) if n and p.scl is not None else None,
            "valid": data & ~cloud & aoi,
        }
    return out


def _median(obs: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Per-pixel median over axis 0 of (n, bands, h, w) observations, NaN = none; `count` valid ones per pixel.

    np.sort puts NaN last, so the valid values of a pixel are its first `count`; this is np.nanmedian's result
    at a fraction of its time for few observations (nanmedian falls back to a per-pixel loop there).
    """
    ranked = np.sort(obs, axis=0)
    c = count.astype(np.intp)[None, None]
    lo = np.take_along_axis(ranked, np.maximum((c - 1) // 2, 0), axis=0)[0]  # the middle one, or the lower of two
    hi = np.take_along_axis(ranked, c // 2, axis=0)[0]
    return np.where(count[None] > 0, (lo + hi) / 2, np.float32(np.nan)).astype(np.float32)


class Sentinel2Composite(Source):
    """The ten reflectance bands composited per pixel from one or more products' valid (SCL-clear) observations."""

    key = "sentinel2"
    bands = S2_BANDS

    def __init__(self, products: tuple[Sentinel2Source, ...], method: str, masked: tuple[int, ...],
                 preview: dict[str, dict[str, Any]], skipped: tuple[dict[str, str], ...]):
        self.method = method
        self.masked = masked
        self.skipped = skipped
        # Best first: least cloudy over the AOI (products without SCL last), then by date.
        def rank(p: Sentinel2Source) -> tuple:
            share = preview[p.path]["cloud_share"]
            return (share is None, share if share is not None else 0.0, p.info.get("date") or "", p.path)
        self.products = tuple(sorted(products, key=rank))
        # Products of one solar day (neighbouring tiles of one pass) are one observation, fused first-valid.
        days = [p.info.get("date") or f"#{k}" for k, p in enumerate(self.products)]
        first = {d: k for k, d in reversed(list(enumerate(days)))}
        self.group = tuple(first[d] for d in days)
        self.has_scl = all(p.scl is not None for p in self.products)
        self.crs_label = ", ".join(sorted({p.crs_label for p in self.products}))
        self.stats = {p.path: {k: v for k, v in preview[p.path].items() if k not in ("valid", "aoi_px", "aoi_data_px")}
                      for p in self.products}
        taken = None
        for p in self.products:  # the share of the AOI each product is expected to supply, from the 60 m preview
            valid = preview[p.path]["valid"]
            used = valid if method == "median" or taken is None else valid & ~taken
            self.stats[p.path]["contributed_estimate"] = round(int(used.sum()) / max(preview[p.path]["aoi_px"], 1), 4)
            taken = valid.copy() if taken is None else taken | valid
        # The AOI's share with a clear observation in any product (None for an AOI no 60 m pixel centre falls in).
        aoi_px = preview[self.products[0].path]["aoi_px"]
        self.usable_share = round(int(taken.sum()) / aoi_px, 4) if aoi_px else None
        self.unusable = "clouded (SCL) or without data in every observation" if self.has_scl else "without data"

    def files(self) -> list[str]:
        return sorted({f for p in self.products for f in p.files()})

    def product_facts(self) -> list[dict[str, Any]]:
        """Per product, best first: path, date, tile, baseline, cloud and data share over the AOI, expected contribution."""
        return [{"path": p.path, "form": p.form, "date": p.info.get("date"), "tile": p.info.get("tile"),
                 "processing_baseline": p.info.get("processing_baseline"), "crs": p.crs_label,
                 "radiometry_source": p.info.get("radiometry_source"), "scaling": p.info.get("scaling"),
                 **self.stats[p.path]} for p in self.products]

    def describe(self) -> dict[str, Any]:
        head = self.products[0].describe() if len(self.products) == 1 else {
            "path": [p.path for p in self.products], "form": sorted({p.form for p in self.products}), "crs": self.crs_label,
            "reflectance": "DN * scale + offset, per product",
            "cloud_mask": f"SCL classes {list(self.masked)} -> invalid" if self.has_scl else None,
        }
        if len(self.products) == 1 and self.has_scl:
            head["cloud_mask"] = f"SCL classes {list(self.masked)} -> NaN"
        return {**head, "composite": self.method, "observations": len(set(self.group)),
                "products": self.product_facts(), "skipped": list(self.skipped)}

    def read(self, geobox: GeoBox, extras: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """The composite of a window; in `extras`: valid_count, s2_data / s2_cloud masks, and with extras['aoi']
        the AOI pixels each product supplied (s2_contrib)."""
        h, w = geobox.shape
        out = np.full((len(S2_BANDS), h, w), np.nan, dtype="float32")
        count = np.zeros((h, w), "uint8")
        data_any = np.zeros((h, w), bool)
        cloud_any = np.zeros((h, w), bool)
        contrib = np.zeros(len(self.products), "int64")
        aoi = extras.get("aoi") if extras is not None else None
        active = [k for k, p in enumerate(self.products) if p.touches(geobox)]
        groups = sorted({self.group[k] for k in active})
        slot = {g: i for i, g in enumerate(groups)}
        step = max(1, min(h, STRIP_BUDGET_BYTES // (max(len(groups), 1) * _BYTES_PER_OBSERVATION * w)))
        for r0 in range(0, h if active else 0, step):
            rows = slice(r0, min(h, r0 + step))
            box_ = geobox[rows, :]
            obs = np.full((len(groups), len(S2_BANDS), rows.stop - r0, w), np.nan, dtype="float32")
            who = np.full((len(groups), rows.stop - r0, w), -1, dtype="int16")
            for k in active:  # best first, so within a day the least cloudy product fills first
                ex: dict[str, np.ndarray] = {}
                data = self.products[k].read(box_, ex, masked=self.masked)
                ok = np.isfinite(data).all(axis=0)
                g = slot[self.group[k]]
                take = ok & (who[g] < 0)
                obs[g][:, take] = data[:, take]
                who[g][take] = k
                if "scl" in ex:
                    data_any[rows] |= ex["scl"] != 0
                    cloud_any[rows] |= np.isin(ex["scl"], SCL_CLOUD)
                else:
                    data_any[rows] |= np.isfinite(data).any(axis=0)
            valid = who >= 0
            count[rows] = valid.sum(axis=0)
            if len(active) == 1:  # one product: its bands as read (a band may be valid where another is not)
                out[:, rows] = data
                chosen = who[0]
            elif len(groups) == 1:
                out[:, rows] = obs[0]
                chosen = who[0]
            elif self.method == "median":
                out[:, rows] = _median(obs, count[rows])
                chosen = None
            else:  # best: the valid observation of the best-ranked product (products are sorted best first)
                rank = np.where(valid, who, np.iinfo("int16").max)
                pick = rank.argmin(axis=0)
                best = np.take_along_axis(obs, pick[None, None], axis=0)[0]
                out[:, rows] = np.where(valid.any(axis=0)[None], best, np.nan)
                chosen = np.where(valid.any(axis=0), np.take_along_axis(who, pick[None], axis=0)[0], -1)
            if aoi is not None:
                inside = aoi[rows]
                for k in active:
                    used = (chosen == k) if chosen is not None else (who == k).any(axis=0)
                    contrib[k] += int((used & inside).sum())
            del obs, who
        if extras is not None:
            extras["valid_count"] = count
            if self.has_scl:
                extras["s2_data"] = data_any
                extras["s2_cloud"] = data_any & cloud_any & (count == 0)
            if aoi is not None:
                extras["s2_contrib"] = contrib
        return out

