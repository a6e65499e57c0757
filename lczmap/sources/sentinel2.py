"""Sentinel-2 L2A (.SAFE, band-file folder, multi-band GeoTIFF, STAC Item or ItemCollection, or a folder of these)
as 10 reflectance bands, SCL-masked, composited per pixel across products.

Reflectance = DN * scale + offset per band, where (scale, offset) come from, in order of precedence:
the raster's own GDAL scale/offset, the STAC asset's `raster:bands`, the product's MTD_MSIL2A.xml
(offset = BOA_ADD_OFFSET / BOA_QUANTIFICATION_VALUE, scale = 1 / BOA_QUANTIFICATION_VALUE), the STAC
property `s2:processing_baseline` (>= 04.00: offset -1000 DN), and otherwise the current ESA convention
(quantification 10000, offset -1000; a warning says it was assumed). Each product gets its own rule, so
products of mixed processing baselines composite correctly. 20 m bands are resampled bilinearly; the scene
classification (SCL) nearest, and SCL classes 0, 1, 3, 8, 9, 10 (nodata, saturated/defective, cloud shadow,
clouds, cirrus; optionally 11, snow) make a pixel's observation invalid.

Several products become one `Sentinel2Composite`: every product is checked once when planned (bad ones are
skipped with a warning, products off the AOI with an INFO line, duplicates used once), products of the same
day are fused first-valid into one observation (odc-stac's `groupby="solar_day"`), and each block is
composited from the valid observations: the per-band median, or the observation of the least cloudy product
(`best`). A block is composited in row strips sized so the observation stack stays under a fixed budget,
so memory per block does not grow with the number of products.
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
from odc.geo.geom import Geometry, box
from rasterio.enums import Resampling
from rasterio.features import rasterize

from ..errors import LczmapError, reading
from .base import RasterInfo, Source, check_exists, check_overlap, inspect_raster, is_remote, warp, warp_files

log = logging.getLogger(__name__)

S2_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
SCL_MASKED = (0, 1, 3, 8, 9, 10)
SCL_CLOUD = (3, 8, 9, 10)
SCL_SNOW = 11
COMPOSITES = ("median", "best")
# Bytes of observations one block may hold at once: a block is composited in row strips of this size, so its
# memory does not grow with the number of products. Per pixel and observation: the ten bands, their sorted copy
# (median) and the index and validity of the product that supplied it.
STRIP_BUDGET_BYTES = 48 << 20
_BYTES_PER_OBSERVATION = 2 * len(S2_BANDS) * 4 + 3
PREVIEW_FACTOR = 6  # the plan-time cloud ranking reads each SCL on a 60 m version of the base grid
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

    @property
    def footprint(self) -> Geometry:
        """The product's raster extent (of its B02 file), in its own CRS."""
        return box(*self.info["bounds"], self.info["crs_wkt"])

    def touches(self, geobox: GeoBox) -> bool:
        return self.footprint.intersects(geobox.extent.to_crs(self.info["crs_wkt"]))

    def read(self, geobox: GeoBox, extras: dict[str, np.ndarray] | None = None,
             masked: tuple[int, ...] = SCL_MASKED) -> np.ndarray:
        out = np.empty((len(S2_BANDS), *geobox.shape), dtype="float32")
        invalid = None
        if self.scl is not None:
            scl = warp(self.scl.href, [self.scl.index], geobox, Resampling.nearest, "uint8", src_nodata=0, dst_nodata=0)[0]
            invalid = np.isin(scl, masked)
            if extras is not None:
                extras["scl"] = scl
            if invalid.all():  # all cloud or outside the swath here: the band files need not be decoded
                out.fill(np.nan)
                return out
        files = [(href, [r.index for _, r in items], nodata) for href, nodata, items in self._groups]
        for (_, _, items), dn in zip(self._groups, warp_files(files, geobox, Resampling.bilinear, "float32")):
            for k, (pos, ref) in enumerate(items):  # one warp per file (a multi-band file is read once)
                out[pos] = dn[k] * np.float32(ref.scale) + np.float32(ref.offset)
        if invalid is not None:
            out[:, invalid] = np.nan
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
            **{k: v for k, v in self.info.items() if k not in ("bounds", "crs_wkt")},
            "scl": self.scl.href if self.scl else None,
            "cloud_mask": f"SCL classes {list(SCL_MASKED)} -> NaN" if self.scl else None,
        }


def open_sentinel2(path: str | Path, aoi: Geometry | None) -> Sentinel2Source:
    """Recognise the form of one product, check every band file once, and return a readable source.

    With `aoi`, a product that does not overlap it is refused; None leaves that check to the caller.
    """
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
    with reading(path, "Sentinel-2 product metadata"):  # a non-numeric value or band id is one line naming the file
        return _read_mtd(path)


def _read_mtd(path: Path) -> _Mtd:
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


BASELINE_04_START = "2022-01-25"  # ESA's switch to processing baseline 04.00 (BOA_ADD_OFFSET -1000) for new products


def _assumed(where: str) -> tuple[dict[str, Any], float, float]:
    sensed = _facts(Path(where).name)["date"]
    if sensed is not None and sensed < BASELINE_04_START:  # e.g. BigEarthNet's 2017-2018 patches: DN / 10000
        log.warning("%s: no scale/offset metadata; sensed %s, before processing baseline 04.00, so "
                    "reflectance = DN / 10000 (no offset)", where, sensed)
        info = {"radiometry_source": "assumed (sensed before baseline 04.00)", "processing_baseline": None}
        return info, 1 / DEFAULT_QUANTIFICATION, 0.0
    log.warning(
        "%s: no scale/offset metadata; assuming processing baseline >= 04.00 "
        "(reflectance = (DN - 1000) / 10000); add MTD_MSIL2A.xml or GDAL scale/offset to be sure", where,
    )
    info = {"radiometry_source": "assumed (baseline >= 04.00)", "processing_baseline": None}
    return info, 1 / DEFAULT_QUANTIFICATION, BASELINE_04_OFFSET / DEFAULT_QUANTIFICATION


def _refs(
    where: str,
    found: dict[str, tuple[RasterInfo, int]],
    aoi: Geometry | None,
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
    crss = {band_info.crs_label for band_info, _ in found.values()}
    if len(crss) > 1:
        raise LczmapError(f"{where}: the bands of one product are in different CRSs ({', '.join(sorted(crss))})")
    checked: set[str] = set()
    for band_info, _ in found.values():
        if aoi is not None and band_info.href not in checked:
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
    info["crs_wkt"] = found["B02"][0].crs
    info["bounds"] = found["B02"][0].bounds
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
    info.update(_facts(path.name, mtd=mtd))
    return Sentinel2Source(str(path), "SAFE", refs, scl, info)


def _from_folder(path: Path, aoi: Geometry) -> Sentinel2Source:
    files = [f for f in path.iterdir() if f.is_file() and f.suffix.lower() in _RASTER_SUFFIXES]
    if not files:
        raise LczmapError(f"{path}: folder holds no raster files (.tif, .tiff, .jp2) for the Sentinel-2 bands")
    mtd = read_mtd(path / "MTD_MSIL2A.xml") if (path / "MTD_MSIL2A.xml").exists() else None
    refs, scl, info = _refs(str(path), _band_files(files), aoi, mtd=mtd)
    info.update(_facts(path.name, *(f.name for f in sorted(files)), mtd=mtd))
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
    info.update(_facts(Path(href).name, rinfo.tags.get("PRODUCT_ID", ""), rinfo.tags.get("DATATAKE_DATE", ""), mtd=mtd))
    return Sentinel2Source(href, "multi-band raster", refs, scl, info)


def _baseline_fallback(baseline: Any, source: str) -> tuple[dict[str, Any], float, float] | None:
    if baseline is None:
        return None
    offset = BASELINE_04_OFFSET if _baseline_at_least_4(str(baseline)) else 0.0
    info = {"radiometry_source": source, "processing_baseline": str(baseline)}
    return info, 1 / DEFAULT_QUANTIFICATION, offset / DEFAULT_QUANTIFICATION


def _read_json(href: str) -> Any:
    try:
        return json.loads(Path(href).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LczmapError(f"{href}: not a readable STAC JSON file ({exc})") from None


def _from_stac(href: str, aoi: Geometry | None) -> Sentinel2Source:
    doc = _read_json(href)
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        raise LczmapError(f"{href}: a STAC ItemCollection; give it as a list of products (it is expanded there)")
    return stac_item_source(doc, href, Path(href).resolve().parent, aoi)


def stac_item_source(doc: Any, where: str, base: Path, aoi: Geometry | None) -> Sentinel2Source:
    """A product from a STAC Item (a dict); relative asset hrefs are relative to `base`."""
    if not isinstance(doc, dict) or doc.get("type") != "Feature" or not isinstance(doc.get("assets"), dict):
        raise LczmapError(f"{where}: not a STAC Item (expected a GeoJSON Feature with 'assets')")
    href = where
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
    props = doc.get("properties") or {}
    baseline = props.get("s2:processing_baseline")
    fallback = _baseline_fallback(baseline, "STAC s2:processing_baseline")
    refs, scl, info = _refs(href, found, aoi, fallback=fallback, declared=declared)
    tile = props.get("s2:mgrs_tile") or (
        f"{props['mgrs:utm_zone']}{props['mgrs:latitude_band']}{props['mgrs:grid_square']}"
        if all(k in props for k in ("mgrs:utm_zone", "mgrs:latitude_band", "mgrs:grid_square")) else None)
    info.update(_facts(str(doc.get("id", "")), str(props.get("datetime") or ""), tile=tile))
    info["product_id"] = str(doc.get("id") or info["product_id"])
    return Sentinel2Source(href, "STAC item", refs, scl, info)


# ---- product facts ----------------------------------------------------------------------------------

_SAFE_NAME = re.compile(r"S2[A-D]_MSIL2A_(\d{8})T(\d{6})_N(\d{4})_R(\d{3})_T(\d{2}[C-X][A-Z]{2})_")
_TILE = re.compile(r"(?:^|[_\-.#/])T?(\d{1,2}[C-HJ-NP-X][A-HJ-NP-Z][A-HJ-NP-V])(?=[_\-.]|$)")
_DATE = re.compile(r"(?<!\d)(20\d{2})-?([01]\d)-?([0-3]\d)(?:T(\d{2}):?(\d{2}):?(\d{2}))?")


def _facts(*texts: str, mtd: _Mtd | None = None, tile: str | None = None) -> dict[str, Any]:
    """Product id, sensing date/time, MGRS tile and relative orbit, from names (SAFE, band files, STAC ids) or metadata."""
    facts: dict[str, Any] = {"product_id": texts[0].removesuffix(".SAFE") if texts else None, "date": None,
                             "sensing_time": None, "tile": tile, "relative_orbit": None}
    for text in texts:
        m = _SAFE_NAME.search(text)
        if m:
            day, time_, _, orbit, tile_ = m.groups()
            facts.update(sensing_time=f"{day}T{time_}", tile=facts["tile"] or tile_, relative_orbit=int(orbit))
            facts["date"] = f"{day[:4]}-{day[4:6]}-{day[6:]}"
            break
    for text in texts:
        if facts["date"] is None and (m := _DATE.search(text)):
            y, mo, d, hh, mi, ss = m.groups()
            facts["date"] = f"{y}-{mo}-{d}"
            facts["sensing_time"] = f"{y}{mo}{d}T{hh}{mi}{ss}" if hh else None
        if facts["tile"] is None and (m := _TILE.search(text)):
            facts["tile"] = m.group(1).zfill(5)
    if mtd is not None:
        facts["processing_baseline"] = mtd.baseline
    return facts


def _check_tile(src: Sentinel2Source) -> None:
    """Refuse a product whose MGRS tile lies in another UTM zone than its rasters' CRS (a mislabelled or mixed product)."""
    tile, label = src.info.get("tile"), src.crs_label
    m = re.fullmatch(r"EPSG:(32[67])(\d\d)", label or "")
    if not tile or not m:
        return
    zone, north = int(tile[:-3]), tile[-3] >= "N"
    if zone != int(m.group(2)) or north != (m.group(1) == "326"):
        raise LczmapError(f"{src.path}: tile {tile} lies in UTM zone {zone}{'N' if north else 'S'}, "
                          f"but the product's rasters are in {label}")


# ---- several products -------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Entry:
    """One product named in the input: a path, or an Item of a STAC ItemCollection (`doc`, hrefs relative to `base`)."""

    where: str
    doc: dict | None = None
    base: Path | None = None


def as_paths(value: Any) -> tuple[str, ...]:
    """The Sentinel-2 input of a config (a path, or a list/tuple of paths) as a tuple of strings."""
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value)
    return (str(value),)


def _is_band_folder(p: Path) -> bool:
    names = set()
    for f in p.iterdir():
        if f.is_file() and f.suffix.lower() in _RASTER_SUFFIXES:
            names |= {band_name(t) for t in re.split(r"[_\-.\s]+", f.stem)} - {None}
    return len(names & set(S2_BANDS)) >= 3


def _expand(href: str) -> list[_Entry]:
    """The products `href` names: itself, the Items of an ItemCollection, or every product in a folder of products."""
    check_exists(href, "Sentinel-2 input")
    p = Path(href)
    if is_remote(href):
        return [_Entry(href)]
    if p.is_dir():
        jsons = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() == ".json")
        if (p / "GRANULE").is_dir() or (not jsons and _is_band_folder(p)):
            return [_Entry(href)]
        # A folder of products: STAC JSON files (their assets may sit beside them), sub-folders, multi-band rasters.
        subdirs = sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
        rasters = [] if jsons else sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in _RASTER_SUFFIXES)
        members = [str(m) for m in (*jsons, *subdirs, *rasters)]
        if not members:
            raise LczmapError(f"{p}: folder holds no Sentinel-2 product (.SAFE, band files, GeoTIFF or STAC JSON)")
        return [e for m in members for e in _expand(m)]
    if p.suffix.lower() == ".json":
        doc = _read_json(href)
        base = p.resolve().parent
        if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
            items = doc.get("features")
            if not isinstance(items, list) or not items:
                raise LczmapError(f"{href}: a STAC ItemCollection without items")
            return [_Entry(f"{href}#{item.get('id', k) if isinstance(item, dict) else k}", item, base)
                    for k, item in enumerate(items)]
        return [_Entry(href, doc, base)]
    return [_Entry(href)]


def _open_entry(entry: _Entry, aoi: Geometry | None) -> Sentinel2Source:
    if entry.doc is not None:
        return stac_item_source(entry.doc, entry.where, entry.base or Path.cwd(), aoi)
    return open_sentinel2(entry.where, aoi)


def _identity(src: Sentinel2Source) -> tuple:
    """Two inputs are the same acquisition when tile and sensing time agree (a SAFE and its COG copy), else same files."""
    tile, when = src.info.get("tile"), src.info.get("sensing_time")
    if tile and when:
        return ("acquisition", tile, when)
    return ("files", tuple(sorted(str(Path(f).resolve()) if not is_remote(f) else f for f in src.files())))


def open_products(paths: Any, grid: Any, composite: str = "median", mask_snow: bool = False) -> "Sentinel2Composite":
    """Open and check every Sentinel-2 product named by `paths` (one path or several) for the city `grid`.

    One product is checked as strictly as ever (any problem is an error). Of several, a product that cannot be
    used (unreadable, a band missing, bands in several CRSs, its tile in another UTM zone than its rasters, no
    SCL where its siblings have one) is skipped with a warning naming it; a product off the AOI or without data
    over it is skipped with an INFO line; duplicates are used once. Nothing usable left is one error.
    """
    if composite not in COMPOSITES:
        raise LczmapError(f"--composite {composite}: choose one of {', '.join(COMPOSITES)}")
    hrefs = as_paths(paths)
    if not hrefs:
        raise LczmapError("no Sentinel-2 input: pass --s2 PATH or set 'sentinel2' in city.yaml (it is required)")
    entries = [e for h in dict.fromkeys(hrefs) for e in _expand(h)]
    masked = (*SCL_MASKED, SCL_SNOW) if mask_snow else SCL_MASKED
    skipped: list[dict[str, str]] = []

    def skip(where: str, reason: str, level: int = logging.WARNING) -> None:
        log.log(level, "%s: skipped: %s", where, reason)
        skipped.append({"path": where, "reason": reason})

    products: list[Sentinel2Source] = []
    if len(entries) == 1:
        products.append(_open_entry(entries[0], grid.aoi))
        _check_tile(products[0])
    else:
        seen: dict[tuple, str] = {}
        for entry in entries:
            try:
                src = _open_entry(entry, None)
                _check_tile(src)
            except LczmapError as exc:
                skip(entry.where, str(exc).removeprefix(f"{entry.where}: "))
                continue
            if not src.footprint.intersects(grid.aoi.to_crs(src.info["crs_wkt"])):
                skip(entry.where, "does not overlap the AOI", logging.INFO)
                continue
            key = _identity(src)
            if key in seen:
                skip(entry.where, f"duplicate of {seen[key]} (used once)", logging.INFO)
                continue
            seen[key] = entry.where
            products.append(src)
        if any(p.scl is not None for p in products):
            for p in [p for p in products if p.scl is None]:
                skip(p.path, "no SCL layer while the other products have one (its clouds could not be masked)")
                products.remove(p)
    preview = _preview(products, grid, masked)
    if len(entries) > 1:
        for p in [p for p in products if preview[p.path]["aoi_data_px"] == 0]:
            skip(p.path, "no data over the AOI (outside its swath)", logging.INFO)
            products.remove(p)
    if not products:
        where = hrefs[0] if len(hrefs) == 1 else f"{hrefs[0]} (and {len(hrefs) - 1} more)"
        if all("AOI" in s["reason"] for s in skipped):
            b = grid.aoi.to_crs("EPSG:4326").boundingbox
            raise LczmapError(f"--s2 {where}: none of the {len(entries)} Sentinel-2 products overlaps the AOI "
                              f"(AOI lon/lat bounds {', '.join(f'{v:.4f}' for v in b)})")
        reasons = "; ".join(f"{Path(s['path']).name}: {s['reason']}" for s in skipped[:3])
        more = f"; and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        raise LczmapError(f"--s2 {where}: none of the {len(entries)} Sentinel-2 products is usable ({reasons}{more})")
    return Sentinel2Composite(tuple(products), composite, masked, preview, tuple(skipped))


def _preview(products: list[Sentinel2Source], grid: Any, masked: tuple[int, ...]) -> dict[str, dict[str, Any]]:
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
            "aoi_px": max(int(aoi.sum()), 1),
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
            self.stats[p.path]["contributed_estimate"] = round(int(used.sum()) / preview[p.path]["aoi_px"], 4)
            taken = valid.copy() if taken is None else taken | valid

    def files(self) -> list[str]:
        return sorted({f for p in self.products for f in p.files()})

    def product_facts(self) -> list[dict[str, Any]]:
        """Per product, best first: path, date, tile, baseline, cloud and data share over the AOI, expected contribution."""
        return [{"path": p.path, "form": p.form, "date": p.info.get("date"), "tile": p.info.get("tile"),
                 "processing_baseline": p.info.get("processing_baseline"), "crs": p.crs_label,
                 "radiometry_source": p.info.get("radiometry_source"), **self.stats[p.path]} for p in self.products]

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


# ---- online: a STAC API (or a static STAC catalog) --------------------------------------------------

STAC_COLLECTION = "sentinel-2-l2a"


def search_stac(url: str, aoi: Geometry, out: Path, datetime: str | None = None, max_cloud: float | None = None,
                collection: str = STAC_COLLECTION, limit: int = 500) -> Path:
    """Find Sentinel-2 L2A Items over `aoi` in a STAC API (pystac-client item search) or a static catalog (walked
    and filtered here), and write them with absolute asset hrefs as an ItemCollection JSON `out`.

    Nothing is downloaded: staging reads only the windows it needs from each Item's COGs.
    """
    try:
        import pystac
        from pystac_client import Client
    except ImportError:
        raise LczmapError("--stac-url: searching a STAC API needs pystac-client (pip install pystac-client)") from None
    import shapely.geometry

    from ..atomic import write_json_atomic

    lonlat = aoi.to_crs("EPSG:4326").geom
    try:
        root = pystac.read_file(url)
        if any("item-search" in str(c) for c in root.extra_fields.get("conformsTo", [])):
            client = Client.open(url)
            query = {"eo:cloud_cover": {"lte": max_cloud}} if max_cloud is not None else None
            search = client.search(collections=[collection], intersects=shapely.geometry.mapping(lonlat),
                                   datetime=datetime, query=query, max_items=limit)
            items = list(search.items())
        else:
            start, end = _time_range(datetime)
            items = [item for item in root.get_items(recursive=True)
                     if (item.collection_id in (None, collection))
                     and item.geometry is not None and shapely.geometry.shape(item.geometry).intersects(lonlat)
                     and (item.datetime is None or start <= item.datetime.isoformat() <= end)
                     and (max_cloud is None or float(item.properties.get("eo:cloud_cover", 0.0)) <= max_cloud)][:limit]
    except LczmapError:
        raise
    except Exception as exc:  # pystac-client, requests and JSON errors: one line naming the catalog
        text = str(exc).strip().splitlines()
        raise LczmapError(f"--stac-url {url}: STAC search failed ({text[0] if text else type(exc).__name__})") from None
    if not items:
        when = f" in {datetime}" if datetime else ""
        cloud = f" with at most {max_cloud:g} % cloud" if max_cloud is not None else ""
        raise LczmapError(f"--stac-url {url}: no {collection} items over the AOI{when}{cloud}")
    features = []
    for item in items:
        item = item.clone()
        item.make_asset_hrefs_absolute()
        features.append(item.to_dict(include_self_link=False, transform_hrefs=False))
    log.info("STAC search %s: %d items over the AOI, written to %s", url, len(features), out)
    return write_json_atomic(out, {"type": "FeatureCollection", "features": features})


def _time_range(datetime: str | None) -> tuple[str, str]:
    """ISO bounds of a STAC datetime (`2023-01-01/2023-12-31`, open ends `..`, or one day), compared as strings."""
    if not datetime:
        return "", "~"
    start, _, end = datetime.partition("/")
    end = end or start
    start = "" if start in ("", "..") else start
    end = "~" if end in ("", "..") else (end + "T23:59:59.999999+00:00" if len(end) == 10 else end)
    return start, end
