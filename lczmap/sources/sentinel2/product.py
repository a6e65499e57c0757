"""One Sentinel-2 L2A product (.SAFE, folder of band files or multi-band raster; STAC Items in stac.py), checked once
and read as ten reflectance bands with its SCL's cloudy pixels NaN."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry, box
from rasterio.enums import Resampling

from ...errors import LczmapError
from ..base import RasterInfo, Source, check_overlap, inspect_raster, is_remote, warp, warp_files
from .bands import RASTER_SUFFIXES, S2_BANDS, SCL_MASKED, band_files, band_of
from .facts import name_facts
from .radiometry import Fallback, Mtd, band_radiometry, baseline_fallback, read_mtd

log = logging.getLogger(__name__)


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


def product_refs(
    where: str,
    found: dict[str, tuple[RasterInfo, int]],
    aoi: Geometry | None,
    mtd: Mtd | None = None,
    fallback: Fallback | None = None,
    declared: dict[str, tuple[float, float]] | None = None,
    sensed: str | None = None,
) -> tuple[dict[str, BandRef], BandRef | None, dict[str, Any]]:
    """Band references with radiometry resolved per band, after the band-set and overlap checks.

    `declared` holds (scale, offset) a catalogue states per band (STAC raster:bands); `sensed` is the sensing date
    the product's names or catalogue give (YYYY-MM-DD), for when no metadata states the radiometry.
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
    rules, info = band_radiometry(where, found, mtd, fallback, declared, sensed)
    refs: dict[str, BandRef] = {}
    for band in S2_BANDS:
        rinfo, index = found[band]
        nodata = rinfo.nodata if rinfo.nodata is not None else (mtd.nodata if mtd else 0.0)
        refs[band] = BandRef(rinfo.href, index, *rules[band], float(nodata), rinfo.res_m)
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


def _with_facts(info: dict[str, Any], facts: dict[str, Any], mtd: Mtd | None) -> dict[str, Any]:
    info.update(facts)
    if mtd is not None:
        info["processing_baseline"] = mtd.baseline
    return info


def from_safe(path: Path, aoi: Geometry | None) -> Sentinel2Source:
    """A .SAFE product: its MTD_MSIL2A.xml and the one granule's band files."""
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
    refs, scl, info = product_refs(str(path), band_files(files), aoi, mtd=mtd)
    _with_facts(info, name_facts(path.name), mtd)
    return Sentinel2Source(str(path), "SAFE", refs, scl, info)


def from_folder(path: Path, aoi: Geometry | None) -> Sentinel2Source:
    """A folder of band files (one per band, the band in the file name), with MTD_MSIL2A.xml beside them if any."""
    files = [f for f in path.iterdir() if f.is_file() and f.suffix.lower() in RASTER_SUFFIXES]
    if not files:
        raise LczmapError(f"{path}: folder holds no raster files (.tif, .tiff, .jp2) for the Sentinel-2 bands")
    mtd = read_mtd(path / "MTD_MSIL2A.xml") if (path / "MTD_MSIL2A.xml").exists() else None
    facts = name_facts(path.name, *(f.name for f in sorted(files)))  # the date: in the folder's name or the files'
    refs, scl, info = product_refs(str(path), band_files(files), aoi, mtd=mtd, sensed=facts["date"])
    _with_facts(info, facts, mtd)
    return Sentinel2Source(str(path), "band folder", refs, scl, info)


def from_multiband(href: str, aoi: Geometry | None) -> Sentinel2Source:
    """A multi-band raster whose band descriptions name the bands."""
    rinfo = inspect_raster(href, "Sentinel-2 raster")
    found: dict[str, tuple[RasterInfo, int]] = {}
    for index, desc in enumerate(rinfo.descriptions, start=1):
        band = band_of(desc)
        if band and band not in found:
            found[band] = (rinfo, index)
    if not found:
        raise LczmapError(
            f"{href}: a {rinfo.count}-band raster without band descriptions naming the Sentinel-2 bands "
            f"(set them to B02, B03, ... SCL, e.g. with rasterio's descriptions or gdal_edit.py)"
        )
    mtd_path = Path(href).with_name("MTD_MSIL2A.xml")
    mtd = read_mtd(mtd_path) if not is_remote(href) and mtd_path.exists() else None
    fallback = baseline_fallback(rinfo.tags.get("PROCESSING_BASELINE"), "raster tag PROCESSING_BASELINE")
    facts = name_facts(Path(href).name, rinfo.tags.get("PRODUCT_ID", ""), rinfo.tags.get("DATATAKE_DATE", ""))
    refs, scl, info = product_refs(href, found, aoi, mtd=mtd, fallback=fallback, sensed=facts["date"])
    _with_facts(info, facts, mtd)
    return Sentinel2Source(href, "multi-band raster", refs, scl, info)
