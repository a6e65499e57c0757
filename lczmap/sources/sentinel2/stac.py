"""Sentinel-2 from STAC: an Item as a product (parsed by pystac and odc-stac), and the --datetime range a search
filters by (the search itself: lczmap.fetch.stac)."""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import odc.stac
import pystac
from odc.geo.geom import Geometry

from ...errors import LczmapError, OptionError, reading
from ..base import RasterInfo, inspect_raster
from .bands import band_of
from .facts import name_facts
from .product import Sentinel2Source, product_refs
from .radiometry import baseline_fallback

STAC_COLLECTION = "sentinel-2-l2a"


def _parsed_item(doc: dict, where: str, base: Path) -> odc.stac.ParsedItem:
    """The Item's raster assets with absolute hrefs (relative ones are relative to `base`), as odc-stac sees them."""
    with reading(where, "STAC Item"):
        item = pystac.Item.from_dict({"stac_version": "1.0.0", "links": [], **doc})  # the two keys lczmap does not use
        item.set_self_href(str(base / f"{item.id or 'item'}.json"))
        return odc.stac.parse_item(item)


def stac_item_source(doc: Any, where: str, base: Path, aoi: Geometry | None) -> Sentinel2Source:
    """A product from a STAC Item (a dict); relative asset hrefs are relative to `base`."""
    if not isinstance(doc, dict) or doc.get("type") != "Feature" or not isinstance(doc.get("assets"), dict):
        raise LczmapError(f"{where}: not a STAC Item (expected a GeoJSON Feature with 'assets')")
    candidates: dict[str, list[tuple[int, str, int, str]]] = defaultdict(list)
    for (key, index), raster in _parsed_item(doc, where, base).bands.items():
        asset = doc["assets"][key]
        eo = [b for b in asset.get("eo:bands", []) if isinstance(b, dict)]
        band = band_of(key, *(b.get("name") for b in eo[index - 1: index]))
        if band is None:
            continue
        uri = str(raster.uri).removeprefix("file://")
        is_jp2 = "jp2" in str(asset.get("type", "")).lower() or uri.lower().endswith(".jp2")
        candidates[band].append((int(is_jp2), key, index, uri))  # prefer the COG over the JP2 copy
    found: dict[str, tuple[RasterInfo, int]] = {}
    declared: dict[str, tuple[float, float]] = {}
    for band, cands in candidates.items():
        _, key, index, uri = min(cands)
        found[band] = (inspect_raster(uri, f"STAC asset '{key}' ({band})"), index)
        stated = doc["assets"][key].get("raster:bands") or []
        rb = stated[index - 1] if len(stated) >= index and isinstance(stated[index - 1], dict) else {}
        if "scale" in rb or "offset" in rb:
            declared[band] = (float(rb.get("scale", 1.0)), float(rb.get("offset", 0.0)))
    props = doc.get("properties") or {}
    fallback = baseline_fallback(props.get("s2:processing_baseline"), "STAC s2:processing_baseline")
    tile = props.get("s2:mgrs_tile") or (
        f"{props['mgrs:utm_zone']}{props['mgrs:latitude_band']}{props['mgrs:grid_square']}"
        if all(k in props for k in ("mgrs:utm_zone", "mgrs:latitude_band", "mgrs:grid_square")) else None)
    facts = name_facts(str(doc.get("id", "")), str(props.get("datetime") or ""), tile=tile)
    refs, scl, info = product_refs(where, found, aoi, fallback=fallback, declared=declared, sensed=facts["date"])
    info.update(facts)
    info["product_id"] = str(doc.get("id") or info["product_id"])
    return Sentinel2Source(where, "STAC item", refs, scl, info)


# ---- --datetime -----------------------------------------------------------------------------------------

_RFC3339_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_RFC3339_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})?")


@dataclass(frozen=True)
class DateRange:
    """A `--datetime` range: each end a UTC datetime, or None where it is open."""

    start: dt.datetime | None
    end: dt.datetime | None

    def __str__(self) -> str:
        """The STAC API's form: `2023-12-01T00:00:00Z/2024-01-31T23:59:59.999999Z`, `..` for an open end."""
        return "/".join(".." if t is None else t.isoformat().replace("+00:00", "Z") for t in (self.start, self.end))

    def overlaps(self, start: dt.datetime | None, end: dt.datetime | None) -> bool:
        """Whether a time span (an Item's datetime, or its start and end; None: unknown) meets the range."""
        return ((self.start is None or end is None or end >= self.start)
                and (self.end is None or start is None or start <= self.end))


def parse_datetime(text: str | None) -> DateRange | None:
    """`--datetime` as dates: an RFC 3339 interval `start/end` whose ends are dates (YYYY-MM-DD, a whole UTC day) or
    date-times (`2024-01-31T10:30:00Z`; without an offset, UTC), either end open (`..` or empty), or one date or
    date-time alone. None stays None; anything else is refused in one line naming --datetime."""
    if text is None:
        return None
    parts = text.strip().split("/")
    if len(parts) > 2:
        raise OptionError(f"--datetime {text}: one '/' at most (START/END, e.g. 2023-06-01/2023-08-31)")
    start, end = (_moment(parts[0], text, False), _moment(parts[-1], text, True))
    if start is None and end is None:
        raise OptionError(f"--datetime {text}: give at least one date (e.g. 2023-06-01/.. or ../2024-01-31)")
    if start is not None and end is not None and start > end:
        raise OptionError(f"--datetime {text}: the range starts after it ends")
    return DateRange(start, end)


def _moment(part: str, text: str, end: bool) -> dt.datetime | None:
    """One end of a --datetime range as a UTC datetime (a date: its first or last instant), None when open."""
    part = part.strip()
    if part in ("", ".."):
        return None
    try:
        if _RFC3339_DATE.fullmatch(part):
            day = dt.datetime.combine(dt.date.fromisoformat(part), dt.time.max if end else dt.time.min)
            return day.replace(tzinfo=dt.timezone.utc)
        if _RFC3339_TIME.fullmatch(part):
            moment = dt.datetime.fromisoformat(part.upper().replace(" ", "T"))
            return _utc(moment)
    except ValueError as exc:
        raise OptionError(f"--datetime {text}: '{part}' is not a calendar date or time ({exc})") from None
    hint = " (months and days take two digits)" if re.fullmatch(r"\d{4}-\d{1,2}-\d{1,2}", part) else ""
    raise OptionError(f"--datetime {text}: '{part}' is not an RFC 3339 date (YYYY-MM-DD, e.g. 2024-01-31) "
                      f"or date-time (e.g. 2024-01-31T10:30:00Z){hint}")


def _utc(moment: dt.datetime | None) -> dt.datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=dt.timezone.utc) if moment.tzinfo is None else moment.astimezone(dt.timezone.utc)

