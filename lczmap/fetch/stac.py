"""Find the Items of one collection over an area: a STAC API search or a static catalog walk (pystac-client, with
timeouts, retries and a deadline for the whole search), or, offline, the Items an earlier search left in the cache.
The one STAC search of lczmap: `lczmap fetch` and `--stac-url` (`write_items`) both use it.

Every Item found online is kept in the cache (`items/<host>/<collection>/<id>.json`, asset hrefs absolute and unsigned),
so `--offline` finds the same Items for the same or an overlapping area without the network. Filters are applied
here as well as by the server: some servers ignore or refuse `query`, and a static catalog cannot filter at all.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import shapely.geometry
from odc.geo.geom import Geometry
from shapely.geometry.base import BaseGeometry

from ..atomic import write_json_atomic
from ..config import cache_root
from ..errors import LczmapError
from ..sources.network import NETWORK_CONNECT_S, NETWORK_REQUEST_S, NETWORK_SEARCH_S, with_deadline
from ..sources.sentinel2.stac import STAC_COLLECTION, parse_datetime
from .catalogs import SIGNER_PACKAGE, Collection
from .remote import Settings, host_of, safe_name

log = logging.getLogger(__name__)

SEARCH_LIMIT = 1000  # Items per search at most: a year of Sentinel-2 over a city is about 150
RETRY_STATUS = (429, 500, 502, 503, 504)


class CatalogUnreachable(LczmapError):
    """The catalogue did not answer (or answered with an error) after every retry."""


def default_datetime(today: dt.date | None = None) -> str:
    """The 12 months before today, as a STAC datetime interval."""
    today = today or dt.date.today()
    start = today.replace(year=today.year - 1) if not (today.month == 2 and today.day == 29) else today - dt.timedelta(days=365)
    return f"{start.isoformat()}/{today.isoformat()}"


def _item_span(item: dict[str, Any]) -> tuple[dt.datetime | None, dt.datetime | None]:
    """An Item's time span: its datetime, else its start_datetime and end_datetime (None where not given)."""
    props = item.get("properties") or {}

    def moment(key: str) -> dt.datetime | None:
        text = props.get(key)
        try:
            value = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00")) if text else None
        except ValueError:
            return None
        return value.replace(tzinfo=dt.timezone.utc) if value is not None and value.tzinfo is None else value

    at = moment("datetime")
    return (at, at) if at is not None else (moment("start_datetime"), moment("end_datetime"))


def search(collection: Collection, area: BaseGeometry, datetime: str | None, settings: Settings,
           keep: Callable[[dict[str, Any]], bool] = lambda item: True, query: dict | None = None,
           what: str | None = None) -> list[dict[str, Any]]:
    """Items (dicts, asset hrefs absolute, signed where the catalogue needs it) of `collection` that intersect
    `area` (EPSG:4326) in `datetime` and pass `keep`; online from the catalogue, offline from the cache. Errors
    name `what` (default: the catalogue's URL); the whole online search ends within NETWORK_SEARCH_S."""
    when = parse_datetime(datetime)
    what = what or collection.url

    def wanted(item: dict[str, Any]) -> bool:
        geom = item.get("geometry")
        return (geom is not None and shapely.geometry.shape(geom).intersects(area)
                and (when is None or when.overlaps(*_item_span(item)))
                and item.get("collection", collection.id) == collection.id and keep(item))

    folder = settings.cache / "items" / safe_name(host_of(collection.url)) / safe_name(collection.id)
    if settings.offline:
        found = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
        return [item for item in found if wanted(item)]
    found = with_deadline(lambda: _search_online(collection, area, str(when) if when else None, settings, query, what),
                          NETWORK_SEARCH_S, what)
    items = [item for item in found if wanted(item)]
    folder.mkdir(parents=True, exist_ok=True)
    for item in items:
        write_json_atomic(folder / f"{safe_name(item['id'])}.json", item, indent=None)
    return [sign(collection, item) for item in items]


def _search_online(collection: Collection, area: BaseGeometry, datetime: str | None, settings: Settings,
                   query: dict | None, what: str) -> list[dict[str, Any]]:
    from pystac_client import Client  # pystac-client: only when a catalogue is searched
    from pystac_client.conformance import ConformanceClasses
    from pystac_client.stac_api_io import StacApiIO
    from pystac_client.warnings import FallbackToPystac, NoConformsTo
    from urllib3.util.retry import Retry

    # Refused connections and 429/5xx answers are retried with backoff; a server that accepted and did not answer
    # within the timeout is not (read=0): it is reported at once.
    retry = Retry(total=settings.retries, read=0, backoff_factor=settings.backoff_s, status_forcelist=RETRY_STATUS,
                  allowed_methods=None, raise_on_status=False)
    timeout = (min(NETWORK_CONNECT_S, settings.timeout_s), settings.timeout_s)
    io = StacApiIO(timeout=timeout, max_retries=retry)
    try:
        with warnings.catch_warnings():  # a static catalog advertises no conformance: walked below, as expected
            warnings.simplefilter("ignore", NoConformsTo)
            client = Client.open(collection.url, stac_io=io, timeout=timeout)
        if client.conforms_to(ConformanceClasses.ITEM_SEARCH):
            use_query = query if query and client.conforms_to(ConformanceClasses.QUERY) else None
            found = client.search(collections=[collection.id], intersects=shapely.geometry.mapping(area),
                                  datetime=datetime, query=use_query, max_items=SEARCH_LIMIT)
            items = [item.to_dict(transform_hrefs=False) for item in found.items()]
            # Item hrefs from an API are absolute already; pystac made relative ones absolute against the API root.
        else:  # a static catalog: walk it (it cannot filter)
            items = []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FallbackToPystac)
                found_static = list(client.get_items(recursive=True))
            for item in found_static:
                item = item.clone()
                item.make_asset_hrefs_absolute()
                items.append(item.to_dict(include_self_link=False, transform_hrefs=False))
    except LczmapError:
        raise
    except Exception as exc:  # requests, pystac-client and JSON errors: one line naming the catalogue
        lines = str(exc).strip().splitlines()
        reason = lines[0] if lines else type(exc).__name__
        if "timed out" in reason.lower():
            reason = f"no answer within {settings.timeout_s:g} s, the network deadline"
        raise CatalogUnreachable(f"{what}: searching {collection.id} failed ({reason[:300]})") from None
    log.info("%s: %d %s items over the area", collection.url, len(items), collection.id)
    return items


def sign(collection: Collection, item: dict[str, Any]) -> dict[str, Any]:
    """The Item with its asset URLs signed by the collection's signing package (the Planetary Computer's);
    unchanged for collections that need no signing. Called online only: signatures expire."""
    if collection.signer is None:
        return item
    import importlib

    package = SIGNER_PACKAGE.get(collection.signer, collection.signer)
    try:
        module = importlib.import_module(collection.signer)  # optional: only for catalogues that sign
    except ImportError:
        raise LczmapError(f"{collection.url}: {collection.id} asset URLs must be signed by the {package} package; "
                          f"pip install 'lczmap[planetary-computer]'") from None
    import pystac

    try:
        return module.sign(pystac.Item.from_dict(item)).to_dict(transform_hrefs=False)
    except Exception as exc:  # the signing service's network errors
        raise CatalogUnreachable(f"{collection.url}: signing the {collection.id} asset URLs failed ({exc})") from None


def write_items(url: str, aoi: Geometry, out: Path, datetime: str | None = None, max_cloud: float | None = None) -> Path:
    """`--stac-url`: the Sentinel-2 L2A Items over `aoi` in the STAC API or static catalogue `url` (`search`, cached as
    `lczmap fetch` caches them), written with absolute asset hrefs as an ItemCollection JSON `out`.

    Nothing is downloaded: staging reads only the windows it needs from each Item's COGs.
    """
    collection = Collection(url=url, id=STAC_COLLECTION, assets={})
    settings = Settings(cache=cache_root() / "fetch", timeout_s=NETWORK_REQUEST_S, progress=False)
    items = search(collection, aoi.to_crs("EPSG:4326").geom, datetime, settings,
                   keep=lambda item: max_cloud is None or _cloud(item) <= max_cloud,
                   query={"eo:cloud_cover": {"lte": max_cloud}} if max_cloud is not None else None, what=f"--stac-url {url}")
    if not items:
        cloud = f" with at most {max_cloud:g} % cloud" if max_cloud is not None else ""
        raise LczmapError(f"--stac-url {url}: no {STAC_COLLECTION} items over the AOI"
                          f"{f' in {datetime}' if datetime else ''}{cloud}")
    log.info("STAC search %s: %d items over the AOI, written to %s", url, len(items), out)
    return write_json_atomic(out, {"type": "FeatureCollection", "features": items})


def _cloud(item: dict[str, Any]) -> float:
    return float((item.get("properties") or {}).get("eo:cloud_cover", 0.0))


def item_date(item: dict[str, Any]) -> str:
    props = item.get("properties") or {}
    return str(props.get("datetime") or props.get("start_datetime") or "")[:10]

