"""Sentinel-2 from STAC: an Item as a product (parsed by pystac and odc-stac), the search of a STAC API or static
catalogue for the Items over an AOI, and the --datetime range it filters by."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import odc.stac
import pystac
import shapely.geometry
from odc.geo.geom import Geometry

from ...atomic import write_json_atomic
from ...errors import LczmapError, OptionError, describe, reading
from ..base import RasterInfo, inspect_raster
from ..network import NETWORK_CONNECT_S, NETWORK_REQUEST_S, NETWORK_SEARCH_S, with_deadline
from .bands import band_of
from .facts import name_facts
from .product import Sentinel2Source, product_refs
from .radiometry import baseline_fallback

log = logging.getLogger(__name__)

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


def search_stac(url: str, aoi: Geometry, out: Path, datetime: str | None = None, max_cloud: float | None = None,
                collection: str = STAC_COLLECTION, limit: int = 500) -> Path:
    """Find Sentinel-2 L2A Items over `aoi` in a STAC API (pystac-client item search) or a static catalog (walked
    and filtered here), and write them with absolute asset hrefs as an ItemCollection JSON `out`.

    `datetime` is checked first (parse_datetime). Every request has connect and answer deadlines, the whole search
    one more (sources.network). Nothing is downloaded: staging reads only the windows it needs from each
    Item's COGs.
    """
    when = parse_datetime(datetime)
    try:  # optional: only an online search needs pystac-client (the `stac` extra)
        from pystac_client import Client
        from pystac_client.stac_api_io import StacApiIO
        from urllib3.util.retry import Retry
    except ImportError:
        raise LczmapError("--stac-url: searching a STAC API needs pystac-client (pip install pystac-client)") from None

    lonlat = aoi.to_crs("EPSG:4326").geom
    # Connection failures are retried (with backoff); a server that accepted and did not answer in time is not.
    stac_io = StacApiIO(timeout=(NETWORK_CONNECT_S, NETWORK_REQUEST_S),
                        max_retries=Retry(total=3, read=0, backoff_factor=0.5))

    def find() -> list[pystac.Item]:
        root = pystac.read_file(url, stac_io=stac_io)
        if any("item-search" in str(c) for c in root.extra_fields.get("conformsTo", [])):
            client = Client.open(url, stac_io=stac_io)
            query = {"eo:cloud_cover": {"lte": max_cloud}} if max_cloud is not None else None
            search = client.search(collections=[collection], intersects=shapely.geometry.mapping(lonlat),
                                   datetime=str(when) if when else None, query=query, max_items=limit)
            return list(search.items())
        return [item for item in root.get_items(recursive=True)
                if (item.collection_id in (None, collection))
                and item.geometry is not None and shapely.geometry.shape(item.geometry).intersects(lonlat)
                and (when is None or when.overlaps(*_item_times(item)))
                and (max_cloud is None or float(item.properties.get("eo:cloud_cover", 0.0)) <= max_cloud)][:limit]

    try:
        items = with_deadline(find, NETWORK_SEARCH_S, f"--stac-url {url}")
    except LczmapError:
        raise
    except Exception as exc:  # pystac-client, requests and JSON errors: one line naming the catalog
        text = describe(exc)
        if "timed out" in text.lower():
            text = f"no answer within {NETWORK_REQUEST_S:g} s, the network deadline"
        raise LczmapError(f"--stac-url {url}: STAC search failed ({text})") from None
    if not items:
        cloud = f" with at most {max_cloud:g} % cloud" if max_cloud is not None else ""
        raise LczmapError(f"--stac-url {url}: no {collection} items over the AOI{f' in {datetime}' if when else ''}{cloud}")
    features = []
    for item in items:
        item = item.clone()
        item.make_asset_hrefs_absolute()
        features.append(item.to_dict(include_self_link=False, transform_hrefs=False))
    log.info("STAC search %s: %d items over the AOI, written to %s", url, len(features), out)
    return write_json_atomic(out, {"type": "FeatureCollection", "features": features})


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


def _item_times(item: pystac.Item) -> tuple[dt.datetime | None, dt.datetime | None]:
    """An Item's time span: its datetime, else its start_datetime and end_datetime (None where not given)."""
    if item.datetime is not None:
        return _utc(item.datetime), _utc(item.datetime)
    common = item.common_metadata
    return _utc(common.start_datetime), _utc(common.end_datetime)
