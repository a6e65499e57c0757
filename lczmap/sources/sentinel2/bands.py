"""The Sentinel-2 bands lczmap stacks, the SCL classes it masks, and which band a file name, band description or
STAC asset names."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from ..base import RasterInfo, inspect_raster

S2_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
SCL_MASKED = (0, 1, 3, 8, 9, 10)
SCL_CLOUD = (3, 8, 9, 10)
SCL_SNOW = 11
RASTER_SUFFIXES = {".tif", ".tiff", ".jp2", ".vrt"}

# STAC / earth-search common names and other spellings of the bands lczmap uses.
_ALIASES = {
    "blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05", "rededge2": "B06", "rededge3": "B07",
    "nir": "B08", "nir08": "B8A", "swir16": "B11", "swir22": "B12", "scl": "SCL",
}


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


def res_hint(name: str) -> int:
    """Pixel size written in a file name (`_10m`), so only the finest copy of a band needs opening."""
    m = re.search(r"[_\-.](\d+)m(?:[_\-.]|$)", name)
    return int(m.group(1)) if m else 0


def band_of(*names: str | None) -> str | None:
    """The one band that names denote together (a file name without its suffix, a band description, a STAC asset key
    and its eo:bands name): their `_`/`-`/`.`/space-separated parts name exactly one band, else None.

    One rule for every form, so `T33UUP_B02_10m.jp2`, a description `B02 (blue)` and an asset `blue` all mean B02.
    """
    found = {band_name(part) for name in names if name for part in re.split(r"[_\-.\s]+", name)} - {None}
    return found.pop() if len(found) == 1 else None


def file_band(f: Path) -> str | None:
    """The band a file's name denotes (band_of its name without the suffix)."""
    return band_of(f.name[: -len(f.suffix)] if f.suffix else f.name)


def band_files(files: list[Path]) -> dict[str, tuple[RasterInfo, int]]:
    """The finest file per band among `files`, told apart by a band token in the file name."""
    by_band: dict[str, list[Path]] = defaultdict(list)
    for f in sorted(files):
        band = file_band(f)
        if band is not None:
            by_band[band].append(f)
    found = {}
    for band, candidates in by_band.items():
        best = min(candidates, key=lambda f: res_hint(f.name))
        found[band] = (inspect_raster(best, f"Sentinel-2 band {band}"), 1)
    return found


def is_band_folder(p: Path) -> bool:
    """Whether a folder's raster file names name at least three of the bands (one product, not a folder of them)."""
    names = {file_band(f) for f in p.iterdir() if f.is_file() and f.suffix.lower() in RASTER_SUFFIXES}
    return len(names & set(S2_BANDS)) >= 3
