"""How a product's digital numbers become reflectance (DN * scale + offset per band): from its metadata (GDAL
scale/offset, STAC raster:bands, MTD_MSIL2A.xml, a stated processing baseline), else its sensing date, else its data;
the choice and its reason recorded for the report."""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from odc.geo.geobox import GeoBox
from rasterio.enums import Resampling

from ...errors import LczmapError, reading
from ..base import RasterInfo, warp
from .bands import S2_BANDS, band_name

log = logging.getLogger(__name__)

DEFAULT_QUANTIFICATION = 10000.0
BASELINE_04_OFFSET = -1000.0
BASELINE_04_START = "2022-01-25"  # ESA's switch to processing baseline 04.00 (BOA_ADD_OFFSET -1000) for new products
# Without metadata or a date, the data decide: the visible bands (dark for most surfaces) read at most this many
# pixels a side; at least this share of their valid DNs below 1000 means no offset (with baseline 04.00's -1000
# offset such DNs are negative reflectance, a fraction of a percent of a scene; without it, every pixel darker
# than 10 % reflectance: most vegetation, water and shade).
DATA_BANDS = ("B02", "B03", "B04")
DATA_SAMPLE_SIDE = 256
NO_OFFSET_SHARE = 0.05
# MTD_MSIL2A.xml numbers bands 0..12 in this order when it has no Spectral_Information list.
_MTD_BAND_IDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")

Fallback = tuple[dict[str, Any], float, float]  # (facts for the report, scale, offset) for bands without metadata


@dataclass(frozen=True)
class Mtd:
    baseline: str | None
    quantification: float
    offsets: dict[str, float]  # DN offsets per band
    nodata: float


def read_mtd(path: Path) -> Mtd:
    """Processing baseline, BOA quantification value, per-band BOA offsets and NODATA value from MTD_MSIL2A.xml."""
    with reading(path, "Sentinel-2 product metadata"):  # a non-numeric value or band id is one line naming the file
        return _read_mtd(path)


def _read_mtd(path: Path) -> Mtd:
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise LczmapError(f"{path}: cannot parse the product metadata ({exc})") from None
    baseline, quant, nodata = None, None, 0.0
    raw_offsets: dict[str, float] = {}
    band_ids = dict(enumerate(_MTD_BAND_IDS))
    pending_special = None
    for el in root.iter():
        tag = el.tag.rsplit("}", 1)[-1]
        text = (el.text or "").strip()
        if tag == "PROCESSING_BASELINE":
            baseline = text
        elif tag.endswith("BOA_QUANTIFICATION_VALUE"):
            quant = float(text)
        elif tag == "BOA_ADD_OFFSET":
            raw_offsets[el.get("band_id", "")] = float(text)
        elif tag == "Spectral_Information" and el.get("bandId") is not None:
            name = el.get("physicalBand", "")
            band_ids[int(el.get("bandId"))] = band_name(name) or name.upper()
        elif tag == "SPECIAL_VALUE_TEXT":
            pending_special = text
        elif tag == "SPECIAL_VALUE_INDEX" and pending_special == "NODATA":
            nodata = float(text)
    if quant is None:
        raise LczmapError(f"{path}: no BOA_QUANTIFICATION_VALUE; is this a Level-2A product's MTD_MSIL2A.xml?")
    offsets = {band_ids.get(int(k), k): v for k, v in raw_offsets.items() if k.isdigit()}
    if not offsets and baseline_at_least_4(baseline):
        log.warning("%s: processing baseline %s but no BOA_ADD_OFFSET list; using -1000", path, baseline)
        offsets = {b: BASELINE_04_OFFSET for b in S2_BANDS}
    return Mtd(baseline, quant, offsets, nodata)


def baseline_at_least_4(baseline: str | None) -> bool:
    try:
        return baseline is not None and float(baseline) >= 4.0
    except ValueError:
        return False


def _raster_scale_offset(info: RasterInfo, index: int) -> tuple[float, float] | None:
    """GDAL's own per-band scale/offset, when the file sets them (1 and 0 mean 'not set')."""
    scale, offset = info.scales[index - 1], info.offsets[index - 1]
    return None if (scale == 1.0 and offset == 0.0) else (scale, offset)


def baseline_fallback(baseline: Any, source: str) -> Fallback | None:
    """The rule a stated processing baseline implies (>= 04.00: offset -1000 DN), naming where it was stated."""
    if baseline is None:
        return None
    at_least_4 = baseline_at_least_4(str(baseline))
    offset = BASELINE_04_OFFSET if at_least_4 else 0.0
    why = f"{source} says processing baseline {baseline}, {'so' if at_least_4 else 'before 04.00, so no'} offset"
    info = {"radiometry_source": source, "processing_baseline": str(baseline), "why": why}
    return info, 1 / DEFAULT_QUANTIFICATION, offset / DEFAULT_QUANTIFICATION


def _from_date(where: str, sensed: str) -> Fallback:
    """The rule the sensing date implies: products made before ESA's switch to baseline 04.00 have no offset."""
    if sensed < BASELINE_04_START:  # e.g. BigEarthNet's 2017-2018 patches: DN / 10000
        why = f"sensed {sensed}, before processing baseline 04.00 began ({BASELINE_04_START}), so no offset"
        info = {"radiometry_source": "assumed (sensed before baseline 04.00)", "processing_baseline": None, "why": why}
        log.warning("%s: no scale/offset metadata; %s: reflectance = DN / 10000 (add MTD_MSIL2A.xml or GDAL "
                    "scale/offset to be sure)", where, why)
        return info, 1 / DEFAULT_QUANTIFICATION, 0.0
    why = f"sensed {sensed}, after processing baseline 04.00 began ({BASELINE_04_START}), so offset -1000"
    info = {"radiometry_source": "assumed (sensed after baseline 04.00)", "processing_baseline": None, "why": why}
    log.warning("%s: no scale/offset metadata; %s: reflectance = (DN - 1000) / 10000 (add MTD_MSIL2A.xml or GDAL "
                "scale/offset to be sure)", where, why)
    return info, 1 / DEFAULT_QUANTIFICATION, BASELINE_04_OFFSET / DEFAULT_QUANTIFICATION


def _dn_sample(info: RasterInfo, index: int) -> np.ndarray:
    """The valid digital numbers of one band, read at most DATA_SAMPLE_SIDE pixels a side (nearest)."""
    x0, y0, x1, y1 = info.bounds
    rows, cols = round((y1 - y0) / info.res[1]), round((x1 - x0) / info.res[0])
    step = max(1, -(-max(rows, cols) // DATA_SAMPLE_SIDE))
    grid = GeoBox.from_bbox(info.bounds, info.crs, shape=(max(1, rows // step), max(1, cols // step)))
    nodata = info.nodata if info.nodata is not None else 0.0
    dn = warp(info.href, [index], grid, Resampling.nearest, "float32", src_nodata=nodata)[0]
    return dn[np.isfinite(dn) & (dn > 0)]


def _from_data(where: str, found: dict[str, tuple[RasterInfo, int]]) -> Fallback:
    """The rule the digital numbers imply: with baseline 04.00's offset a DN below 1000 is a negative reflectance,
    rare in the visible bands; without it, every pixel darker than 10 % reflectance is one."""
    dn = np.concatenate([_dn_sample(*found[band]) for band in DATA_BANDS])
    share = float((dn < -BASELINE_04_OFFSET).mean()) if dn.size else 0.0
    no_offset = share >= NO_OFFSET_SHARE
    counted = f"{share:.1%} of the {dn.size} valid {'/'.join(DATA_BANDS)} digital numbers are below 1000"
    if not dn.size:
        why = "no valid digital numbers to judge from, so the current ESA convention (offset -1000)"
    elif no_offset:
        why = f"{counted} (negative reflectance with baseline 04.00's -1000 offset), so no offset"
    else:
        why = f"{counted} (under {NO_OFFSET_SHARE:.0%}, as with baseline 04.00's -1000 offset), so offset -1000"
    formula = "DN / 10000" if no_offset else "(DN - 1000) / 10000"
    log.warning("%s: no scale/offset metadata and no sensing date in its names; %s: reflectance = %s assumed "
                "(add MTD_MSIL2A.xml or GDAL scale/offset, or a date in the folder name, to be sure)", where, why, formula)
    info = {"radiometry_source": "assumed (from the data)", "processing_baseline": None, "why": why}
    return info, 1 / DEFAULT_QUANTIFICATION, 0.0 if no_offset else BASELINE_04_OFFSET / DEFAULT_QUANTIFICATION


def _formula(scale: float, offset: float) -> str:
    """A rule as users write it: `(DN - 1000) / 10000`, `DN / 10000`, else `DN * scale + offset`."""
    quantification = 1 / scale if scale else 0.0
    dn_offset = offset * quantification
    whole = (quantification >= 1 and math.isclose(quantification, round(quantification), rel_tol=1e-5)
             and math.isclose(dn_offset, round(dn_offset), rel_tol=1e-5, abs_tol=1e-6))  # float32 metadata: 9.9999997e-05
    if whole:
        q, o = round(quantification), round(dn_offset)
        return f"DN / {q}" if o == 0 else f"(DN {'-' if o < 0 else '+'} {abs(o)}) / {q}"
    return f"DN * {scale:g} {'-' if offset < 0 else '+'} {abs(offset):g}"


def _scaling(rules: dict[str, tuple[float, float]], source: str, reasons: dict[str, str]) -> dict[str, Any]:
    """The report's record of the choice: the rule (per band where bands differ), where it came from, and why."""
    formulas = {band: _formula(*rule) for band, rule in rules.items()}
    uniform = len(set(formulas.values())) == 1
    return {"rule": formulas["B02"] if uniform else formulas, "source": source,
            "assumed": "assumed" in source, "reason": "; ".join(dict.fromkeys(reasons.values()))}


def band_radiometry(
    where: str,
    found: dict[str, tuple[RasterInfo, int]],
    mtd: Mtd | None = None,
    fallback: Fallback | None = None,
    declared: dict[str, tuple[float, float]] | None = None,
    sensed: str | None = None,
) -> tuple[dict[str, tuple[float, float]], dict[str, Any]]:
    """(scale, offset) per band, each from the first of: the raster's own GDAL scale/offset, `declared` (what a
    catalogue states, STAC raster:bands), the product's MTD_MSIL2A.xml, `fallback` (a stated processing baseline),
    the `sensed` date (YYYY-MM-DD from the product's names or catalogue), and the digital numbers themselves; with the
    facts the report gives about them, `scaling` among them (the rule, its source, whether assumed, and why)."""
    sources: set[str] = set()
    reasons: dict[str, str] = {}
    info: dict[str, Any] = {}
    rules: dict[str, tuple[float, float]] = {}
    for band in S2_BANDS:
        rinfo, index = found[band]
        own = _raster_scale_offset(rinfo, index)
        if own is not None:
            scale, offset = own
            source, reasons[source] = "raster scale/offset", "the band files' own GDAL scale/offset"
        elif declared and band in declared:
            scale, offset = declared[band]
            source, reasons[source] = "STAC raster:bands", "the STAC Item's raster:bands scale/offset"
        elif mtd is not None:
            scale = 1 / mtd.quantification
            offset = mtd.offsets.get(band, 0.0) / mtd.quantification
            source = "MTD_MSIL2A.xml"
            offsets = sorted({f"{v:g}" for v in mtd.offsets.values()}) or ["none"]
            reasons[source] = (f"MTD_MSIL2A.xml (processing baseline {mtd.baseline}): BOA_QUANTIFICATION_VALUE "
                               f"{mtd.quantification:g}, BOA_ADD_OFFSET {'/'.join(offsets)}")
            info["processing_baseline"] = mtd.baseline
            info["quantification"] = mtd.quantification
        else:
            if fallback is None:
                fallback = _from_date(where, sensed) if sensed else _from_data(where, found)
            extra, scale, offset = fallback
            info.update({k: v for k, v in extra.items() if k != "why"})
            source = extra["radiometry_source"]
            reasons[source] = extra["why"]
        sources.add(source)
        rules[band] = (float(scale), float(offset))
    info["radiometry_source"] = ", ".join(sorted(sources))
    info["scaling"] = _scaling(rules, info["radiometry_source"], reasons)
    return rules, info
