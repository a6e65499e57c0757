"""Sentinel-2 L2A (.SAFE, band-file folder, multi-band GeoTIFF or STAC Item) as 10 reflectance bands, SCL-masked.

Reflectance = DN * scale + offset per band, where (scale, offset) come from, in order of precedence:
the raster's own GDAL scale/offset, the STAC asset's `raster:bands`, the product's MTD_MSIL2A.xml
(offset = BOA_ADD_OFFSET / BOA_QUANTIFICATION_VALUE, scale = 1 / BOA_QUANTIFICATION_VALUE), the STAC
property `s2:processing_baseline` (>= 04.00: offset -1000 DN), and otherwise the current ESA convention
(quantification 10000, offset -1000; a warning says it was assumed). 20 m bands are resampled bilinearly;
the scene classification (SCL) nearest, and SCL classes 0, 1, 3, 8, 9, 10 (nodata, saturated/defective,
cloud shadow, clouds, cirrus) become NaN in every band.
"""

from __future__ import annotations

import json
import logging
import re
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry
from rasterio.enums import Resampling

from ..errors import LczmapError
from .base import RasterInfo, Source, check_exists, check_overlap, inspect_raster, is_remote, warp

log = logging.getLogger(__name__)

S2_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
SCL_MASKED = (0, 1, 3, 8, 9, 10)
SCL_CLOUD = (3, 8, 9, 10)
DEFAULT_QUANTIFICATION = 10000.0
BASELINE_04_OFFSET = -1000.0

# STAC / earth-search common names and other spellings of the bands lczmap uses.
_ALIASES = {
    "blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05", "rededge2": "B06", "rededge3": "B07",
    "nir": "B08", "nir08": "B8A", "swir16": "B11", "swir22": "B12", "scl": "SCL",
}
# MTD_MSIL2A.xml numbers bands 0..12 in this order when it has no Spectral_Information list.
_MTD_BAND_IDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
_RASTER_SUFFIXES = {".tif", ".tiff", ".jp2", ".vrt"}


def band_name(token: str | None) -> str | None:
    """The lczmap band (B02..B12, B8A, SCL) a file-name token, description or asset key denotes, else None."""
    if not token:
        return None
    t = token.strip()
    if t.lower() in _ALIASES:
        return _ALIASES[t.lower()]
    m = re.fullmatch(r"[Bb]0?(\d{1,2}|8[Aa])", t)
    if m:
        num = m.group(1).upper()
        name = "B8A" if num == "8A" else f"B{int(num):02d}"
        return name if name in S2_BANDS else None
    return "SCL" if t.upper() == "SCL" else None


@dataclass(frozen=True)
class BandRef:
    """Where one band lives and how its digital numbers become reflectance."""

    href: str
    index: int
    scale: float
    offset: float
    nodata: float
    res_m: float


class Sentinel2Source(Source):
    """The ten reflectance bands of one L2A scene, masked by its SCL when the product has one."""

    key = "sentinel2"
    bands = S2_BANDS

    def __init__(self, path: str, form: str, refs: dict[str, BandRef], scl: BandRef | None, info: dict[str, Any]):
        self.path = path
        self.form = form
        self.refs = refs
        self.scl = scl
        self.info = info
        groups: dict[tuple[str, float], list[tuple[int, BandRef]]] = defaultdict(list)
        for pos, band in enumerate(S2_BANDS):
            groups[(refs[band].href, refs[band].nodata)].append((pos, refs[band]))
        self._groups = tuple((href, nodata, tuple(items)) for (href, nodata), items in groups.items())
        self.crs_label = info.pop("crs_label")

    def read(self, geobox: GeoBox, extras: dict[str, np.ndarray] | None = None) -> np.ndarray:
        out = np.empty((len(S2_BANDS), *geobox.shape), dtype="float32")
        for href, nodata, items in self._groups:  # one warp per file (a multi-band file is read once)
            dn = warp(href, [r.index for _, r in items], geobox, Resampling.bilinear, "float32", src_nodata=nodata)
            for k, (pos, ref) in enumerate(items):
                out[pos] = dn[k] * np.float32(ref.scale) + np.float32(ref.offset)
        if self.scl is not None:
            scl = warp(self.scl.href, [self.scl.index], geobox, Resampling.nearest, "uint8", src_nodata=0, dst_nodata=0)[0]
            out[:, np.isin(scl, SCL_MASKED)] = np.nan
            if extras is not None:
                extras["scl"] = scl
        return out

    def files(self) -> list[str]:
        return sorted({r.href for r in self.refs.values()} | ({self.scl.href} if self.scl else set()))

    def describe(self) -> dict[str, Any]:
        scales = {b: r.scale for b, r in self.refs.items()}
        offsets = {b: r.offset for b, r in self.refs.items()}
        uniform = len(set(scales.values())) == 1 and len(set(offsets.values())) == 1
        return {
            "path": self.path,
            "form": self.form,
            "crs": self.crs_label,
            "resolution_m": {b: round(r.res_m, 2) for b, r in self.refs.items()},
            "reflectance": "DN * scale + offset",
            "scale": scales["B02"] if uniform else scales,
            "offset": offsets["B02"] if uniform else offsets,
            **self.info,
            "scl": self.scl.href if self.scl else None,
            "cloud_mask": f"SCL classes {list(SCL_MASKED)} -> NaN" if self.scl else None,
        }


def open_sentinel2(path: str | Path, aoi: Geometry) -> Sentinel2Source:
    """Recognise the product form, check every band file once, and return a readable source."""
    href = str(path)
    check_exists(href, "Sentinel-2 input")
    p = Path(href)
    if not is_remote(href) and p.is_dir():
        if (p / "GRANULE").is_dir():
            return _from_safe(p, aoi)
        return _from_folder(p, aoi)
    if p.suffix.lower() == ".json":
        return _from_stac(href, aoi)
    return _from_multiband(href, aoi)


# ---- radiometry -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Mtd:
    baseline: str | None
    quantification: float
    offsets: dict[str, float]  # DN offsets per band
    nodata: float


def read_mtd(path: Path) -> _Mtd:
    """Processing baseline, BOA quantification value, per-band BOA offsets and NODATA value from MTD_MSIL2A.xml."""
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
    if not offsets and _baseline_at_least_4(baseline):
        log.warning("%s: processing baseline %s but no BOA_ADD_OFFSET list; using -1000", path, baseline)
        offsets = {b: BASELINE_04_OFFSET for b in S2_BANDS}
    return _Mtd(baseline, quant, offsets, nodata)


def _baseline_at_least_4(baseline: str | None) -> bool:
    try:
        return baseline is not None and float(baseline) >= 4.0
    except ValueError:
        return False


def _raster_scale_offset(info: RasterInfo, index: int) -> tuple[float, float] | None:
    """GDAL's own per-band scale/offset, when the file sets them (1 and 0 mean 'not set')."""
    scale, offset = info.scales[index - 1], info.offsets[index - 1]
    return None if (scale == 1.0 and offset == 0.0) else (scale, offset)


def _assumed(where: str) -> tuple[dict[str, Any], float, float]:
    log.warning(
        "%s: no scale/offset metadata; assuming processing baseline >= 04.00 "
        "(reflectance = (DN - 1000) / 10000); add MTD_MSIL2A.xml or GDAL scale/offset to be sure", where,
    )
    info = {"radiometry_source": "assumed (baseline >= 04.00)", "processing_baseline": None}
    return info, 1 / DEFAULT_QUANTIFICATION, BASELINE_04_OFFSET / DEFAULT_QUANTIFICATION


def _refs(
    where: str,
    found: dict[str, tuple[RasterInfo, int]],
    aoi: Geometry,
    mtd: _Mtd | None = None,
    fallback: tuple[dict[str, Any], float, float] | None = None,
    declared: dict[str, tuple[float, float]] | None = None,
) -> tuple[dict[str, BandRef], BandRef | None, dict[str, Any]]:
    """Band references with radiometry resolved per band, after the band-set and overlap checks.

    `declared` holds (scale, offset) a catalogue states per band (STAC raster:bands).
    """
    missing = [b for b in S2_BANDS if b not in found]
    if missing:
        have = sorted(found, key=lambda b: (b == "SCL", b))
        raise LczmapError(f"{where}: Sentinel-2 input is missing band(s) {', '.join(missing)} (found {', '.join(have) or 'none'})")
    checked: set[str] = set()
    for band_info, _ in found.values():
        if band_info.href not in checked:
            check_overlap(band_info, aoi, "Sentinel-2 band file")
            checked.add(band_info.href)
    sources: set[str] = set()
    info: dict[str, Any] = {}
    refs: dict[str, BandRef] = {}
    for band in S2_BANDS:
        rinfo, index = found[band]
        own = _raster_scale_offset(rinfo, index)
        if own is not None:
            scale, offset = own
            sources.add("raster scale/offset")
        elif declared and band in declared:
            scale, offset = declared[band]
            sources.add("STAC raster:bands")
        elif mtd is not None:
            scale = 1 / mtd.quantification
            offset = mtd.offsets.get(band, 0.0) / mtd.quantification
            sources.add("MTD_MSIL2A.xml")
            info["processing_baseline"] = mtd.baseline
            info["quantification"] = mtd.quantification
        else:
            if fallback is None:
                fallback = _assumed(where)
            extra, scale, offset = fallback
            info.update(extra)
            sources.add(extra.get("radiometry_source", "metadata"))
        nodata = rinfo.nodata if rinfo.nodata is not None else (mtd.nodata if mtd else 0.0)
        refs[band] = BandRef(rinfo.href, index, float(scale), float(offset), float(nodata), rinfo.res_m)
    info["radiometry_source"] = ", ".join(sorted(sources))
    scl = None
    if "SCL" in found:
        sinfo, sindex = found["SCL"]
        scl = BandRef(sinfo.href, sindex, 1.0, 0.0, 0.0, sinfo.res_m)
    else:
        log.warning("%s: no SCL (scene classification) layer; clouds and shadows are NOT masked", where)
    info["crs_label"] = found["B02"][0].crs_label
    return refs, scl, info


# ---- the four input forms ---------------------------------------------------------------------------

def _res_hint(name: str) -> int:
    """Pixel size written in a file name (`_10m`), so only the finest copy of a band needs opening."""
    m = re.search(r"[_\-.](\d+)m(?:[_\-.]|$)", name)
    return int(m.group(1)) if m else 0


def _band_files(files: list[Path]) -> dict[str, tuple[RasterInfo, int]]:
    """The finest file per band among `files`, told apart by a band token in the file name."""
    by_band: dict[str, list[Path]] = defaultdict(list)
    for f in sorted(files):
        tokens = re.split(r"[_\-.\s]+", f.name[: -len(f.suffix)] if f.suffix else f.name)
        names = {band_name(t) for t in tokens} - {None}
        if len(names) == 1:
            by_band[names.pop()].append(f)
    found = {}
    for band, candidates in by_band.items():
        best = min(candidates, key=lambda f: _res_hint(f.name))
        found[band] = (inspect_raster(best, f"Sentinel-2 band {band}"), 1)
    return found


def _from_safe(path: Path, aoi: Geometry) -> Sentinel2Source:
    mtd_path = path / "MTD_MSIL2A.xml"
    if not mtd_path.exists():
        if (path / "MTD_MSIL1C.xml").exists():
            raise LczmapError(f"{path}: a Level-1C product; lczmap needs Level-2A (surface reflectance with SCL)")
        raise LczmapError(f"{path}: .SAFE product has no MTD_MSIL2A.xml")
    mtd = read_mtd(mtd_path)
    granules = sorted(g for g in (path / "GRANULE").iterdir() if (g / "IMG_DATA").is_dir())
    if len(granules) != 1:
        raise LczmapError(f"{path}: expected one granule with IMG_DATA in GRANULE/, found {len(granules)}")
    files = [f for f in (granules[0] / "IMG_DATA").rglob("*.jp2")]
    refs, scl, info = _refs(str(path), _band_files(files), aoi, mtd=mtd)
    return Sentinel2Source(str(path), "SAFE", refs, scl, info)


def _from_folder(path: Path, aoi: Geometry) -> Sentinel2Source:
    files = [f for f in path.iterdir() if f.is_file() and f.suffix.lower() in _RASTER_SUFFIXES]
    if not files:
        raise LczmapError(f"{path}: folder holds no raster files (.tif, .tiff, .jp2) for the Sentinel-2 bands")
    mtd = read_mtd(path / "MTD_MSIL2A.xml") if (path / "MTD_MSIL2A.xml").exists() else None
    refs, scl, info = _refs(str(path), _band_files(files), aoi, mtd=mtd)
    return Sentinel2Source(str(path), "band folder", refs, scl, info)


def _from_multiband(href: str, aoi: Geometry) -> Sentinel2Source:
    rinfo = inspect_raster(href, "Sentinel-2 raster")
    found: dict[str, tuple[RasterInfo, int]] = {}
    for index, desc in enumerate(rinfo.descriptions, start=1):
        band = band_name(desc)
        if band and band not in found:
            found[band] = (rinfo, index)
    if not found:
        raise LczmapError(
            f"{href}: a {rinfo.count}-band raster without band descriptions naming the Sentinel-2 bands "
            f"(set them to B02, B03, ... SCL, e.g. with rasterio's descriptions or gdal_edit.py)"
        )
    mtd_path = Path(href).with_name("MTD_MSIL2A.xml")
    mtd = read_mtd(mtd_path) if not is_remote(href) and mtd_path.exists() else None
    fallback = _baseline_fallback(rinfo.tags.get("PROCESSING_BASELINE"), "raster tag PROCESSING_BASELINE")
    refs, scl, info = _refs(href, found, aoi, mtd=mtd, fallback=fallback)
    return Sentinel2Source(href, "multi-band raster", refs, scl, info)


def _baseline_fallback(baseline: Any, source: str) -> tuple[dict[str, Any], float, float] | None:
    if baseline is None:
        return None
    offset = BASELINE_04_OFFSET if _baseline_at_least_4(str(baseline)) else 0.0
    info = {"radiometry_source": source, "processing_baseline": str(baseline)}
    return info, 1 / DEFAULT_QUANTIFICATION, offset / DEFAULT_QUANTIFICATION


def _from_stac(href: str, aoi: Geometry) -> Sentinel2Source:
    try:
        doc = json.loads(Path(href).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LczmapError(f"{href}: not a readable STAC Item JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("type") != "Feature" or not isinstance(doc.get("assets"), dict):
        raise LczmapError(f"{href}: not a STAC Item (expected a GeoJSON Feature with 'assets')")
    base = Path(href).resolve().parent
    candidates: dict[str, list[tuple[int, str, dict]]] = defaultdict(list)
    for key, asset in doc["assets"].items():
        names = [key] + [b.get("name") for b in asset.get("eo:bands", []) if isinstance(b, dict)]
        band = next((n for n in map(band_name, names) if n), None)
        if band is None or "href" not in asset:
            continue
        is_jp2 = "jp2" in str(asset.get("type", "")).lower() or str(asset["href"]).lower().endswith(".jp2")
        candidates[band].append((int(is_jp2), key, asset))  # prefer the COG over the JP2 copy
    found: dict[str, tuple[RasterInfo, int]] = {}
    declared: dict[str, tuple[float, float]] = {}
    for band, cands in candidates.items():
        _, key, asset = min(cands, key=lambda c: c[:2])
        asset_href = str(asset["href"])
        if asset_href.startswith("file://"):
            asset_href = asset_href[len("file://"):]
        if not is_remote(asset_href) and not Path(asset_href).is_absolute():
            asset_href = str(base / asset_href)
        found[band] = (inspect_raster(asset_href, f"STAC asset '{key}' ({band})"), 1)
        rb = (asset.get("raster:bands") or [{}])[0]
        if "scale" in rb or "offset" in rb:
            declared[band] = (float(rb.get("scale", 1.0)), float(rb.get("offset", 0.0)))
    baseline = doc.get("properties", {}).get("s2:processing_baseline")
    fallback = _baseline_fallback(baseline, "STAC s2:processing_baseline")
    refs, scl, info = _refs(href, found, aoi, fallback=fallback, declared=declared)
    return Sentinel2Source(href, "STAC item", refs, scl, info)
