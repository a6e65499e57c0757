"""Draw WUDAPT-style training areas: polygons over homogeneous blocks of the truth, written as EPSG:4326 GeoJSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import shapely
from pyproj import Transformer
from scipy.ndimage import minimum_filter
from shapely.geometry import Polygon

from ..classes import NODATA
from .layout import Layout

BLOCK_SIZES = (5, 4, 3, 2)
MAX_PER_CLASS = 8
MIN_PER_CLASS = 3
COVER_SHARE = 0.25  # at most this share of the AOI's cells lies under training areas


def training_areas(layout: Layout, rng: np.random.Generator) -> list[tuple[int, Polygon]]:
    """(lcz, polygon in the grid CRS) pairs: square blocks of 2-5 cells of one class that do not touch each other,
    shrunk by 10-40 m; classes take turns (several areas each), and only a share of the city is covered."""
    truth = layout.truth
    taken = np.zeros(truth.shape, bool)
    budget = int(COVER_SHARE * np.count_nonzero(truth))
    codes = [int(c) for c in np.unique(truth) if c != NODATA]
    quota = {c: int(np.clip(np.count_nonzero(truth == c) // 40, MIN_PER_CLASS, MAX_PER_CLASS)) for c in codes}
    candidates = {c: _homogeneous_blocks(truth, c, rng) for c in codes}
    out: list[tuple[int, Polygon]] = []
    added = True
    while added and budget > 0:
        added = False
        for code in codes:
            if quota[code] == 0:
                continue
            while candidates[code]:
                size, r, c = candidates[code].pop()
                if size * size <= budget and not taken[max(r - 1, 0) : r + size + 1, max(c - 1, 0) : c + size + 1].any():
                    taken[r : r + size, c : c + size] = True
                    budget -= size * size
                    quota[code] -= 1
                    out.append((code, _polygon(layout, r, c, size, rng)))
                    added = True
                    break
    return out


def _homogeneous_blocks(truth: np.ndarray, code: int, rng) -> list[tuple[int, int, int]]:
    """(size, row, col) of every size x size block (BLOCK_SIZES) of cells all of `code`, in random order."""
    h, w = truth.shape
    out = []
    mask = truth == code
    for size in BLOCK_SIZES:
        # A block is homogeneous when its minimum over the window is True.
        full = minimum_filter(mask, size, mode="constant", cval=False, origin=-(size // 2))
        rows, cols = np.nonzero(full[: h - size + 1, : w - size + 1])
        out += [(size, int(r), int(c)) for r, c in zip(rows, cols, strict=True)]
    return [out[k] for k in rng.permutation(len(out))]


def _polygon(layout: Layout, r: int, c: int, size: int, rng) -> Polygon:
    t = layout.grid.output.affine
    x0, y0 = t * (c, r)
    x1, y1 = t * (c + size, r + size)
    inset = rng.uniform(10, 25)
    corners = np.array([[x0, y1], [x1, y1], [x1, y0], [x0, y0]], float)
    centre = corners.mean(0)
    # Pull each corner towards the centre by the inset plus a little, so the polygon is a quadrilateral inside the block.
    pulled = corners + np.sign(centre - corners) * (inset + rng.uniform(0, 15, (4, 1)))
    return Polygon(pulled)


def write_reference(path: Path, layout: Layout, rng: np.random.Generator) -> int:
    """Training areas as a GeoJSON FeatureCollection (EPSG:4326) with integer property `lcz`; returns their count."""
    areas = training_areas(layout, rng)
    to_ll = Transformer.from_crs(layout.grid.crs.to_wkt(), "EPSG:4326", always_xy=True)
    features = []
    for k, (code, poly) in enumerate(areas, start=1):
        ll = shapely.transform(poly, lambda xy: np.column_stack(to_ll.transform(xy[:, 0], xy[:, 1])))
        ll = shapely.set_precision(ll, 1e-7)
        features.append({"type": "Feature", "properties": {"id": k, "lcz": code}, "geometry": shapely.geometry.mapping(ll)})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return len(features)
