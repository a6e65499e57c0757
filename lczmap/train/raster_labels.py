"""Training labels from an LCZ raster on a city's output grid: any CRS, resolution and coding, by majority, with weak-label hygiene.

The raster is any LCZ map lczmap can read as a reference: the global LCZ map or an LCZ Generator result
(bands `lcz`, `lczFilter`, `classProbability`; `lczFilter` is used unless another band is named), a WUDAPT
city map, or a map in the codes w2w writes into WRF's LU_INDEX. It is read window by window around the
city, never whole: each output cell takes the most frequent class among the raster cells whose centres fall
in it, or, where none does (a coarser raster), the class of the raster cell under its centre; class codes
are never interpolated. Nodata and values that are no LCZ class are left out and reported.

A coarse map is a weak label: its cells are often misplaced or wrong. The hygiene rules (`LabelRules`) keep
the cells a model should learn from: a probability band above `min_probability`, or else cells whose 3 x 3
neighbourhood agrees with them, and at most `max_per_class` cells per class, drawn at random. With soft labels
a cell's target is the class shares of its 3 x 3 neighbourhood, so a cell the map got wrong, or placed a cell
off, still teaches mostly its neighbours' class (and takes that class, where it holds the most cells). Every
count is reported, so the card says what the model was trained on.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from odc.geo.geobox import GeoboxTiles
from rasterio.warp import Resampling, reproject, transform_bounds
from rasterio.windows import Window, from_bounds
from scipy.ndimage import uniform_filter

from ..classes import N_CLASSES, normalise_codes
from ..errors import LczmapError
from ..reference import LczBand, majority_on_grid
from .rules import LabelRules

log = logging.getLogger(__name__)

# w2w writes built LCZ k (1-10) into WRF's LU_INDEX as OFFSET + k, and LCZ E (15, when counted as urban) as
# OFFSET + 11: OFFSET 30 for WRF 4.3-4.4.1 (41 land categories), 50 from WRF 4.4.2 (61 categories). Natural
# cells keep WRF's own land-use categories (MODIS or USGS), which are no LCZ class and are left out.
WRF_OFFSETS = (30, 50)
WRF_URBAN_CLASSES = (*range(1, 11), 15)
PROBABILITY_WORD = "probability"  # the probability band's description contains this (global map: classProbability)
GRID_BLOCK = 256  # output cells a side brought onto the grid at once
READ_PAD = 2  # raster cells read around each block's footprint, so every output cell sees all of its raster cells


def wrf_to_lcz(values: np.ndarray) -> np.ndarray:
    """LCZ codes of w2w's LU_INDEX values (31-41 or 51-61; see WRF_OFFSETS), 0 for every other value."""
    values = np.asarray(values, np.int64)
    out = np.zeros(values.shape, np.uint8)
    for offset in WRF_OFFSETS:
        k = values - offset
        urban = (k >= 1) & (k <= len(WRF_URBAN_CLASSES))
        out[urban] = np.asarray(WRF_URBAN_CLASSES, np.uint8)[k[urban] - 1]
    return out


def is_wrf(values: np.ndarray) -> np.ndarray:
    """Where values lie in w2w's LCZ ranges of LU_INDEX."""
    return wrf_to_lcz(values) > 0


def lcz_codes(values: np.ndarray, coding: str) -> np.ndarray:
    """uint8 LCZ codes 1-17 of valid raster values in `coding` ("lcz": 1-17 or 101-107; "wrf"), 0 for any other value."""
    values = np.asarray(values, np.int64)
    if coding == "wrf":
        return wrf_to_lcz(values)
    codes = normalise_codes(values)
    return np.where((codes >= 1) & (codes <= N_CLASSES), codes, 0).astype(np.uint8)


@dataclass
class RasterLabels:
    """Labels on a grid: `codes` (h, w) uint8 1-17 (0: none) after hygiene, and `report`, what was kept and why not.

    `targets` (h, w, 17) float32: with soft labels, each cell's class shares (rows sum to 1 where `codes` > 0).
    """

    codes: np.ndarray
    report: dict[str, Any]
    targets: np.ndarray | None = None


class _Reader:
    """One LCZ raster open for reading by window: raw values of the class band, and the probability band if wanted."""

    def __init__(self, path: Path, rules: LabelRules):
        self.path, self.rules = path, rules
        try:  # opens the file and picks the band (lczFilter, else lcz, else 1)
            self.band = LczBand(path, rules.band)
        except LczmapError as exc:  # LczBand names the map's option, --band; here it is --reference-band
            text = str(exc)
            raise type(exc)(f"--reference-{text[2:]}" if text.startswith("--band ") else text) from None
        self.ds = self.band.ds
        self.probability = self._probability_band() if rules.min_probability is not None else None
        self.values_without_class: set[int] = set()

    def _probability_band(self) -> int:
        names = [d or "" for d in self.ds.descriptions]
        found = [i + 1 for i, d in enumerate(names) if PROBABILITY_WORD in d.lower()]
        if not found:
            listed = ", ".join(f"{i + 1}={d}" for i, d in enumerate(names) if d) or "none named"
            raise LczmapError(f"--min-probability: {self.path} has no band named like '{PROBABILITY_WORD}' (bands: {listed})")
        return found[0]

    def close(self) -> None:
        self.ds.close()

    def footprint(self, bounds: tuple[float, float, float, float], crs: Any) -> Window | None:
        """The raster window under `bounds` (in `crs`), padded by READ_PAD cells; None where the raster does not reach."""
        left, bottom, right, top = transform_bounds(crs, self.ds.crs, *bounds, densify_pts=21)
        win = from_bounds(left, bottom, right, top, transform=self.ds.transform)
        c0, r0 = int(np.floor(win.col_off)) - READ_PAD, int(np.floor(win.row_off)) - READ_PAD
        c1 = int(np.ceil(win.col_off + win.width)) + READ_PAD
        r1 = int(np.ceil(win.row_off + win.height)) + READ_PAD
        c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, self.ds.width), min(r1, self.ds.height)
        return Window(c0, r0, c1 - c0, r1 - r0) if c1 > c0 and r1 > r0 else None

    def values(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """(raw values as int64, where they are valid: not nodata, finite and whole) of the class band."""
        data = self.ds.read(self.band.index, window=window, masked=True)
        values, valid = np.ma.getdata(data), ~np.ma.getmaskarray(data)
        if not np.issubdtype(values.dtype, np.integer):
            valid &= np.isfinite(values) & (values == np.round(values))
            values = np.where(valid, values, 0)
        return values.astype(np.int64), valid

    def codes(self, window: Window, coding: str) -> np.ndarray:
        values, valid = self.values(window)
        codes = np.where(valid, lcz_codes(values, coding), 0).astype(np.uint8)
        odd = np.unique(values[valid & (codes == 0)])
        if odd.size and len(self.values_without_class) < 10:
            self.values_without_class.update(odd[: 10 - len(self.values_without_class)].tolist())
        return codes

    def probabilities(self, window: Window, codes: np.ndarray) -> np.ndarray:
        """The probability band over `window` as float32, NaN where the class band has no class."""
        data = self.ds.read(self.probability, window=window, masked=True)
        prob = np.ma.getdata(data).astype(np.float32)
        return np.where(~np.ma.getmaskarray(data) & (codes > 0), prob, np.nan).astype(np.float32)


def detect_coding(reader: _Reader, windows: list[Window]) -> str:
    """"wrf" when the windows hold values in w2w's LCZ ranges of LU_INDEX (which no LCZ map uses), else "lcz"."""
    for window in windows:
        values, valid = reader.values(window)
        if is_wrf(values[valid]).any():
            return "wrf"
    return "lcz"


def labels_on_grid(path: str | Path, grid, rules: LabelRules = LabelRules()) -> RasterLabels:
    """Labels for every output cell of `grid` (a CityGrid) inside its AOI from the LCZ raster at `path`, after hygiene."""
    path = Path(path)
    if not path.exists():
        raise LczmapError(f"{path}: reference file does not exist")
    # One cell of margin, so that the 3 x 3 agreement of edge cells sees their real neighbours.
    padded = grid.output.pad(1)
    reader = _Reader(path, rules)
    try:
        tiles = GeoboxTiles(padded, (GRID_BLOCK, GRID_BLOCK))
        blocks = [(tiles[iy, ix], tiles.roi[iy, ix]) for iy in range(tiles.shape.y) for ix in range(tiles.shape.x)]
        windows = [reader.footprint(tuple(box.boundingbox), box.crs.to_wkt()) for box, _ in blocks]
        if all(w is None for w in windows):
            left, bottom, right, top = (round(v, 4) for v in grid.aoi.to_crs("EPSG:4326").boundingbox)
            raise LczmapError(f"{path}: the LCZ raster does not reach the city (lon {left} to {right}, lat {bottom} to {top})")
        coding = rules.codes if rules.codes != "auto" else detect_coding(reader, [w for w in windows if w is not None])
        codes = np.zeros(padded.shape, np.uint8)
        prob = np.full(padded.shape, np.nan, np.float32)
        for (box, (rows, cols)), window in zip(blocks, windows, strict=True):
            if window is not None:
                codes[rows, cols], prob[rows, cols] = _block(reader, window, box, coding)
        info = {"path": str(path.resolve()), "kind": "raster", **reader.band.info, "coding": coding,
                "values_without_class": sorted(reader.values_without_class), "crs": str(reader.ds.crs),
                "resolution": list(reader.ds.res), "probability_band": reader.probability, "modified": file_date(path)}
        float_probability = reader.probability is not None and reader.ds.dtypes[reader.probability - 1].startswith("float")
    finally:
        reader.close()
    if float_probability and np.nanmax(prob, initial=0) <= 1.0:
        prob = prob * 100  # fractions 0-1 compared with a percentage
    return _hygiene(codes, prob, grid.aoi_mask, rules, info)


def _block(reader: _Reader, window: Window, box, coding: str) -> tuple[np.ndarray, np.ndarray]:
    """(class codes by majority, else nearest; mean probability) of one block of output cells."""
    src = reader.codes(window, coding)
    src_transform, src_crs = reader.ds.window_transform(window), reader.ds.crs
    dst_transform, dst_crs = box.affine, box.crs.to_wkt()
    nearest = np.zeros(box.shape, np.uint8)
    # tolerance=0: exact coordinates per cell, so a cell's raster cell does not depend on the block it is read in.
    reproject(src, nearest, src_transform=src_transform, src_crs=src_crs, src_nodata=0, dst_transform=dst_transform,
              dst_crs=dst_crs, dst_nodata=0, resampling=Resampling.nearest, tolerance=0)
    majority = majority_on_grid(src, src_transform, src_crs, tuple(box.shape), dst_transform, dst_crs)
    codes = np.where(majority > 0, majority, nearest)
    prob = np.full(box.shape, np.nan, np.float32)
    if reader.probability is not None:
        reproject(reader.probabilities(window, src), prob, src_transform=src_transform, src_crs=src_crs, src_nodata=np.nan,
                  dst_transform=dst_transform, dst_crs=dst_crs, dst_nodata=np.nan, resampling=Resampling.average, tolerance=0)
    return codes, prob


def neighbourhood_counts(codes: np.ndarray) -> np.ndarray:
    """(h, w, 17) uint8: per cell, how many cells of its 3 x 3 window (itself included) hold each class."""
    counts = np.zeros((*codes.shape, N_CLASSES), np.uint8)
    for code in np.unique(codes[codes > 0]):
        counts[..., code - 1] = np.rint(uniform_filter((codes == code).astype(np.float32), size=3, mode="constant") * 9)
    return counts


def neighbourhood_agreement(codes: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
    """Per cell, how many cells of its 3 x 3 window (itself included) hold its class (0 for cells without one).

    `counts`: the map's neighbourhood_counts, where already made.
    """
    counts = neighbourhood_counts(codes) if counts is None else counts
    own = np.take_along_axis(counts, (np.maximum(codes, 1).astype(np.int64) - 1)[..., None], axis=-1)[..., 0]
    return np.where(codes > 0, own, 0).astype(np.uint8)


def neighbourhood_shares(codes: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
    """(h, w, 17) float32: per cell with a class, the share of each class among the cells of its 3 x 3 window that have one.

    `counts`: the map's neighbourhood_counts, where already made.
    """
    counts = (neighbourhood_counts(codes) if counts is None else counts).astype(np.float32)
    total = counts.sum(axis=-1, keepdims=True)
    return np.where((codes > 0)[..., None], counts / np.maximum(total, 1), 0).astype(np.float32)


def _soft_codes(codes: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Each cell's most frequent neighbourhood class; a tie keeps the map's class, then the lowest code."""
    own = np.zeros_like(shares)
    np.put_along_axis(own, (np.maximum(codes, 1).astype(np.int64) - 1)[..., None], 1e-3, axis=-1)
    return np.where(codes > 0, (shares + own).argmax(axis=-1) + 1, 0).astype(np.uint8)


def _hygiene(codes: np.ndarray, prob: np.ndarray, aoi_mask: np.ndarray, rules: LabelRules, info: dict[str, Any]) -> RasterLabels:
    """Apply the rules to padded grid labels; the result is cropped to the grid and its AOI."""
    keep = codes > 0
    low = np.zeros(codes.shape, bool)
    if rules.min_probability is not None:
        low = keep & ~(prob >= rules.min_probability)  # NaN probability (none under the cell) counts as low
        keep &= ~low
    disagreeing = np.zeros(codes.shape, bool)
    # Counted on the map as read (before the other rules), so dropping a cell does not change its neighbours'.
    counts = neighbourhood_counts(codes) if rules.agreement or rules.soft else None
    if rules.agreement:
        disagreeing = keep & (neighbourhood_agreement(codes, counts) < rules.agreement)
        keep &= ~disagreeing
    shares = neighbourhood_shares(codes, counts) if rules.soft else None
    inner = (slice(1, -1), slice(1, -1))
    codes, keep, low, disagreeing = (a[inner] for a in (codes, keep, low, disagreeing))
    in_aoi = aoi_mask
    keep &= in_aoi
    classes = codes
    if shares is not None:
        shares = shares[inner]
        classes = _soft_codes(codes, shares)
    kept = np.where(keep, classes, 0).astype(np.uint8)
    capped = _cap_per_class(kept, rules.max_per_class, rules.seed)
    count = lambda a: {str(c): int(n) for c, n in enumerate(np.bincount(a[a > 0], minlength=N_CLASSES + 1)) if c and n}  # noqa: E731
    report = {
        "reference": info, "rules": rules.describe(),
        "cells_in_aoi": int(in_aoi.sum()), "cells_with_class": int((codes[in_aoi] > 0).sum()),
        "dropped_low_probability": int((low & in_aoi).sum()), "dropped_disagreeing": int((disagreeing & in_aoi).sum()),
        "dropped_by_cap": int((kept > 0).sum() - (capped > 0).sum()), "kept": int((capped > 0).sum()),
        "class_counts": count(capped), "class_counts_before_cap": count(kept),
        "relabelled_by_neighbourhood": int(((classes != codes) & (capped > 0)).sum()),
    }
    if not report["kept"]:
        raise LczmapError(f"{info['path']}: no labelled cell of the city is left ({_summary(report)})")
    log.info("%s: %s", info["path"], _summary(report))
    return RasterLabels(capped, report, None if shares is None else np.where((capped > 0)[..., None], shares, 0))


def _cap_per_class(codes: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """At most `cap` cells of each class (a random draw, seeded), the others set to 0; cap 0 keeps all."""
    if not cap:
        return codes
    rng = np.random.default_rng(seed)
    out = codes.copy()
    flat = out.reshape(-1)
    for code in np.unique(flat[flat > 0]):
        cells = np.flatnonzero(flat == code)
        if len(cells) > cap:
            flat[rng.choice(cells, size=len(cells) - cap, replace=False)] = 0
    return out


def _summary(report: dict[str, Any]) -> str:
    return (f"{report['cells_with_class']} of {report['cells_in_aoi']} cells in the AOI have a class; dropped "
            f"{report['dropped_low_probability']} below the probability threshold, {report['dropped_disagreeing']} "
            f"disagreeing with their 3 x 3 neighbourhood, {report['dropped_by_cap']} over the per-class cap; kept {report['kept']}")


def file_date(path: Path) -> str:
    """A file's modification time, UTC, ISO 8601 to the second (a label source's date in the card)."""
    return dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc).isoformat(timespec="seconds")
