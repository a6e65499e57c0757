"""A product's id, sensing date and time, MGRS tile and relative orbit, as its .SAFE name, band file names or STAC
id state them, and the check that its tile agrees with its rasters' UTM zone."""

from __future__ import annotations

import re
from typing import Any

from ...errors import LczmapError

_SAFE_NAME = re.compile(r"S2[A-D]_MSIL2A_(\d{8})T(\d{6})_N(\d{4})_R(\d{3})_T(\d{2}[C-X][A-Z]{2})_")
_TILE = re.compile(r"(?:^|[_\-.#/])T?(\d{1,2}[C-HJ-NP-X][A-HJ-NP-Z][A-HJ-NP-V])(?=[_\-.]|$)")
_DATE = re.compile(r"(?<!\d)(20\d{2})-?([01]\d)-?([0-3]\d)(?:T(\d{2}):?(\d{2}):?(\d{2}))?")


def name_facts(*texts: str, tile: str | None = None) -> dict[str, Any]:
    """Product id, sensing date/time, MGRS tile and relative orbit, from names (SAFE, band files, STAC ids)."""
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
    return facts


def check_tile(path: str, tile: str | None, crs_label: str | None) -> None:
    """Refuse a product whose MGRS tile lies in another UTM zone than its rasters' CRS (a mislabelled or mixed product)."""
    m = re.fullmatch(r"EPSG:(32[67])(\d\d)", crs_label or "")
    if not tile or not m:
        return
    zone, north = int(tile[:-3]), tile[-3] >= "N"
    if zone != int(m.group(2)) or north != (m.group(1) == "326"):
        raise LczmapError(f"{path}: tile {tile} lies in UTM zone {zone}{'N' if north else 'S'}, "
                          f"but the product's rasters are in {crs_label}")
