"""OpenStreetMap buildings over an area into one local OSM file that lczmap's OSM reader stages (`--osm overpass|URL|FILE`).

Staging uses only buildings from OSM (lczmap.sources.osm: `building=*` ways and multipolygons), so only they are
fetched. Three sources:

- `overpass`: the Overpass API through osmnx (`features_from_polygon`, tags `building=True`), queried in fixed
  tiles of TILE_DEG degrees so that a second AOI overlapping the first reuses the tiles already fetched; each
  tile's answer is cached as GeoJSON under `<cache>/overpass/<host>/` (osmnx's own response cache sits beside
  it). The server is $LCZMAP_OVERPASS_URL or the public one; osmnx's wait for a free slot is kept for remote
  servers and skipped for a local one.
- a URL of an .osm.pbf (or .osm) extract: downloaded once into `<cache>/extracts/` (timeouts, retries with
  backoff on 429/5xx and broken connections, resumed with a Range request after a kill, renamed in when
  complete), then clipped.
- a local .osm.pbf / .osm file: clipped.

Clipping (pyosmium) keeps every building way or multipolygon relation that reaches the area's bounding box,
complete with all its nodes and member ways. The result is written with osmium in the format `out_path` names
(.osm: XML, whose `<bounds>` the reader uses as the data's extent; .osm.pbf: PBF) under a temporary name and
renamed when complete; the area's bounding box is the file's declared bounds.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import osmium
import requests
import shapely
from odc.geo.geom import Geometry
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from ..atomic import write_json_atomic
from ..errors import InputError, LczmapError, OutputError, describe
from ..locking import output_lock
from .catalogs import ATTRIBUTION, LICENCE
from .remote import FetchFailed, NotCached, safe_name

log = logging.getLogger(__name__)

PUBLIC_OVERPASS = "https://overpass-api.de/api"
TILE_DEG = 0.05  # Overpass tile side (about 5 km): small answers, reused by neighbouring AOIs
BUILDING_TAGS = {"building": True}
_TILE_VERSION = 1  # bump when a cached tile's content changes
RETRY_STATUS = (429, 500, 502, 503, 504)
_OSMNX_CONTAINERS = ("nodes", "ways", "geometry")  # osmnx columns that are not OSM tags


def fetch_osm(source: str, aoi_geometry_lonlat: BaseGeometry | Geometry, out_path: str | Path, cache_dir: str | Path,
              offline: bool = False, *, overpass_url: str | None = None, timeout_s: float = 30.0, retries: int = 4,
              backoff_s: float = 1.0, progress: bool = True) -> dict[str, Any]:
    """OpenStreetMap buildings over the bounding box of `aoi_geometry_lonlat` (lon/lat; an odc Geometry in any CRS
    is converted) from `source` ('overpass', an http(s) URL of an extract, or a local .osm/.osm.pbf file) into
    `out_path`; returns its provenance (source, url or file, date, bbox, buildings, licence, attribution).

    `offline`: only the cache (and a local file) is used; what is not cached is a NotCached error.
    """
    bbox = _lonlat_bbox(aoi_geometry_lonlat)
    out_path, cache_dir = Path(out_path), Path(cache_dir)
    _osm_format(out_path)
    if source == "overpass":
        url = (overpass_url or os.environ.get("LCZMAP_OVERPASS_URL") or PUBLIC_OVERPASS).rstrip("/")
        features, date = _overpass_buildings(url, bbox, cache_dir / "overpass", offline, timeout_s, retries, backoff_s, progress)
        count = _write_features(features, bbox, out_path)
        origin = {"source": "overpass", "url": f"{url}/interpreter", "date": date}
    else:
        if source.startswith(("http://", "https://")):
            extract = _download(source, cache_dir / "extracts", offline, timeout_s, retries, backoff_s, progress)
            origin = {"source": "extract", "url": source}
        else:
            extract = Path(source)
            if not extract.is_file():
                raise InputError(f"{source}: OSM file not found (--osm takes overpass, a URL or an .osm/.osm.pbf file)")
            origin = {"source": "file", "file": str(extract.resolve())}
        count, date = _clip(extract, bbox, out_path)
        origin["date"] = date
    log.info("%d OpenStreetMap buildings over %s written to %s", count, [round(v, 5) for v in bbox], out_path)
    return {**origin, "bbox": [round(v, 7) for v in bbox], "buildings": count, "path": str(out_path),
            "licence": LICENCE["osm"], "attribution": ATTRIBUTION["osm"]}


def _lonlat_bbox(geometry: BaseGeometry | Geometry) -> tuple[float, float, float, float]:
    if isinstance(geometry, Geometry):
        geometry = geometry.to_crs("EPSG:4326").geom
    west, south, east, north = (float(v) for v in geometry.bounds)
    if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
        raise InputError(f"AOI: lon/lat bounds {(west, south, east, north)} are not a valid area")
    return west, south, east, north


# ---- Overpass (osmnx), by tiles ----------------------------------------------------------------

def tiles(bbox: tuple[float, float, float, float]) -> list[tuple[int, int]]:
    """The (column, row) indices of the TILE_DEG tiles that meet `bbox`."""
    west, south, east, north = bbox
    cols = range(math.floor(west / TILE_DEG), math.ceil(east / TILE_DEG))
    rows = range(math.floor(south / TILE_DEG), math.ceil(north / TILE_DEG))
    return [(c, r) for r in rows for c in cols]


def _tile_box(col: int, row: int) -> BaseGeometry:
    return box(col * TILE_DEG, row * TILE_DEG, (col + 1) * TILE_DEG, (row + 1) * TILE_DEG)


def _overpass_buildings(url: str, bbox: tuple[float, float, float, float], cache: Path, offline: bool, timeout_s: float,
                        retries: int, backoff_s: float, progress: bool) -> tuple[list[dict[str, Any]], str]:
    """Building features (element, id, tags, lon/lat geometry as hex WKB) of every tile over `bbox` that reach it,
    each once; the oldest tile's fetch date."""
    from tqdm.auto import tqdm

    folder = cache / safe_name(urlsplit(url).netloc or url)
    wanted = tiles(bbox)
    path = lambda c, r: folder / f"buildings-v{_TILE_VERSION}-{TILE_DEG}-{c}_{r}.json"  # noqa: E731
    missing = [t for t in wanted if not path(*t).exists()]
    if missing and offline:
        raise NotCached(f"{url}: {len(missing)} of {len(wanted)} OpenStreetMap tile(s) over the AOI are not cached")
    if missing:
        folder.mkdir(parents=True, exist_ok=True)
        with _osmnx_settings(url, cache / "osmnx", timeout_s), \
                tqdm(total=len(missing), desc="OpenStreetMap (Overpass)", unit="tile", disable=not progress, leave=False) as bar:
            for col, row in missing:
                features = _retrying(lambda: _query_tile(col, row), f"{url}/interpreter", retries, backoff_s)
                write_json_atomic(path(col, row), {"fetched": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                                                   "url": url, "tile": [col, row, TILE_DEG], "features": features}, indent=None)
                bar.update()
    seen: dict[tuple[str, int], dict[str, Any]] = {}
    dates = []
    for tile in wanted:
        doc = json.loads(path(*tile).read_text())
        dates.append(doc["fetched"][:10])
        seen.update({(f["element"], f["id"]): f for f in doc["features"]})  # a building on a tile edge comes twice
    features = list(seen.values())
    reach = shapely.intersects(shapely.from_wkb([f["wkb"] for f in features]), box(*bbox)) if features else []
    return [f for f, keep in zip(features, reach, strict=True) if keep], min(dates)


@contextmanager
def _osmnx_settings(url: str, cache: Path, timeout_s: float) -> Iterator[None]:
    """osmnx's global settings for this fetch (server, response cache, timeout), restored afterwards."""
    import osmnx as ox  # osmnx (and its geopandas stack) only when Overpass is queried

    names = ("overpass_url", "cache_folder", "use_cache", "requests_timeout", "overpass_rate_limit", "log_console")
    saved = {n: getattr(ox.settings, n) for n in names}
    host = urlsplit(url).hostname or ""
    ox.settings.overpass_url = url
    ox.settings.cache_folder = str(cache)
    ox.settings.use_cache = True
    ox.settings.requests_timeout = max(1, round(timeout_s))
    ox.settings.overpass_rate_limit = host not in ("127.0.0.1", "localhost", "::1")  # a local server has no slots
    ox.settings.log_console = False
    try:
        yield
    finally:
        for n, v in saved.items():
            setattr(ox.settings, n, v)


def _query_tile(col: int, row: int) -> list[dict[str, Any]]:
    """The building polygons osmnx finds in one tile, as JSON-able features."""
    import osmnx as ox

    try:
        frame = ox.features_from_polygon(_tile_box(col, row), tags=BUILDING_TAGS)
    except ox._errors.InsufficientResponseError as exc:
        if "responded:" in str(exc):  # osmnx: a 200 answer that is not JSON (cut short)
            raise _Retryable(describe(exc)[:300]) from None
        return []  # osmnx: no building in the tile
    except ox._errors.ResponseStatusCodeError as exc:  # osmnx: any other answer than 200 (it waits out 429 and 504 itself)
        text = describe(exc)
        if any(f": {status} " in text for status in RETRY_STATUS):
            raise _Retryable(text) from None
        raise LczmapError(f"{ox.settings.overpass_url}/interpreter: {text[:300]}") from None
    except requests.RequestException:
        raise  # timeouts and broken connections: tried again
    except Exception as exc:  # osmnx failing on an answer it cannot assemble into features
        raise LczmapError(f"{ox.settings.overpass_url}/interpreter: osmnx cannot read the answer ({describe(exc)})") from None
    frame = frame[frame.geom_type.isin(("Polygon", "MultiPolygon")).to_numpy()]  # building nodes, unclosed ways: no area
    tag_columns = [c for c in frame.columns if c not in _OSMNX_CONTAINERS]
    wkb = shapely.to_wkb(frame.geometry.to_numpy(), hex=True)
    out = []
    for (element, osm_id), hex_wkb, values in zip(frame.index, wkb, frame[tag_columns].itertuples(index=False), strict=True):
        tags = {k: str(v) for k, v in zip(tag_columns, values, strict=True) if isinstance(v, (str, int, float)) and v == v}
        out.append({"element": str(element), "id": int(osm_id), "tags": tags, "wkb": hex_wkb})
    return out


class _Retryable(Exception):
    """A failure worth trying again: a 429 or 5xx answer, a body cut short."""


def _retrying(call, what: str, retries: int, backoff_s: float):
    """`call()`, tried again after a growing pause on timeouts, broken connections, cut bodies and 429/5xx answers."""
    for attempt in range(retries + 1):
        try:
            return call()
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError, _Retryable) as exc:
            if attempt == retries:
                raise FetchFailed(f"{what}: {describe(exc)} (after {retries + 1} tries)") from None
            pause = backoff_s * 2**attempt * random.uniform(0.5, 1.0)
            log.debug("%s: %s; trying again in %.1f s", what, describe(exc), pause)
            time.sleep(pause)
    raise AssertionError("unreachable")


def _write_features(features: list[dict[str, Any]], bbox: tuple[float, float, float, float], out_path: Path) -> int:
    """The features as OSM: a closed way per simple polygon (its OSM way id kept), a multipolygon relation with
    outer and inner member ways for the others (its relation id kept; member ways and all nodes get new ids).
    Nodes, then ways, then relations (the order GDAL's OSM driver needs), each made as it is written."""
    geometries = shapely.from_wkb([f["wkb"] for f in features]) if features else []
    first_member_way = 1 + max((f["id"] for f in features if f["element"] == "way"), default=0)
    with _atomic_osm(out_path, bbox) as writer:
        for kind in ("node", "way", "relation"):
            for obj in _osm_objects(features, geometries, first_member_way, kind):
                writer.add(obj)
    return len(features)


def _osm_objects(features: list[dict[str, Any]], geometries, first_member_way: int, kind: str) -> Iterator[Any]:
    """The OSM objects of one kind for the features; ids are assigned the same way on every call."""
    mutable = osmium.osm.mutable
    next_node, next_way = 1, first_member_way
    for f, geometry in zip(features, geometries, strict=True):
        polygons = list(geometry.geoms) if geometry.geom_type == "MultiPolygon" else [geometry]
        simple = f["element"] == "way" and len(polygons) == 1 and not polygons[0].interiors
        members = []
        for polygon in polygons:
            for role, rings in (("outer", [polygon.exterior]), ("inner", polygon.interiors)):
                for ring in rings:
                    points = shapely.get_coordinates(ring)[:-1]  # the closing point is the first node again
                    ids = [*range(next_node, next_node + len(points)), next_node]
                    if kind == "node":
                        yield from (mutable.Node(id=i, version=1, location=(x, y)) for i, (x, y) in zip(ids[:-1], points, strict=True))
                    elif kind == "way" and simple:
                        yield mutable.Way(id=f["id"], version=1, nodes=ids, tags=f["tags"])
                    elif kind == "way":
                        yield mutable.Way(id=next_way, version=1, nodes=ids)
                    next_node += len(points)
                    if not simple:
                        members.append(("w", next_way, role))
                        next_way += 1
        if kind == "relation" and not simple:
            yield mutable.Relation(id=f["id"], version=1, members=members, tags={**f["tags"], "type": "multipolygon"})


def _osm_format(out_path: Path) -> str:
    """osmium's format name for the output file: 'osm' (XML) or 'pbf'."""
    name = out_path.name.lower()
    if not name.endswith((".osm", ".osm.pbf")):
        raise OutputError(f"{out_path}: the OSM output must end in .osm or .osm.pbf")
    return "pbf" if name.endswith(".pbf") else "osm"


@contextmanager
def _atomic_osm(out_path: Path, bbox: tuple[float, float, float, float]) -> Iterator[osmium.SimpleWriter]:
    """An osmium writer on a temporary file beside `out_path` in its format, with `bbox` as the declared bounds;
    renamed onto `out_path` only when everything was written."""
    fmt = _osm_format(out_path)
    header = osmium.io.Header()
    header.set("generator", "lczmap fetch")
    header.add_box(osmium.osm.Box(osmium.osm.Location(bbox[0], bbox[1]), osmium.osm.Location(bbox[2], bbox[3])))
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        with osmium.SimpleWriter(osmium.io.File(str(tmp), fmt), header=header) as writer:
            yield writer
        os.replace(tmp, out_path)
    except OSError as exc:
        raise OutputError(f"{out_path}: cannot be written ({describe(exc)})") from None
    finally:
        tmp.unlink(missing_ok=True)


# ---- extracts: download and clip ----------------------------------------------------------------

def _download(url: str, folder: Path, offline: bool, timeout_s: float, retries: int, backoff_s: float,
              progress: bool) -> Path:
    """The extract at `url`, from the cache or downloaded into it (resumed from a partial file, renamed when complete)."""
    from tqdm.auto import tqdm

    name = Path(urlsplit(url).path).name
    if not name.lower().endswith((".pbf", ".osm")):
        name += ".osm.pbf"
    final = folder / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{safe_name(name)}"
    if final.exists():
        return final
    if offline:
        raise NotCached(f"{url}: OSM extract not cached")
    folder.mkdir(parents=True, exist_ok=True)
    part = final.with_name(f".{final.name}.part")  # kept across runs: a rerun resumes it
    with output_lock(final, wait=timeout_s * (retries + 1)):
        if final.exists():  # another process finished it meanwhile
            return final
        with tqdm(desc="OpenStreetMap extract", unit="B", unit_scale=True, disable=not progress, leave=False) as bar:
            _retrying(lambda: _download_part(url, part, timeout_s, bar), url, retries, backoff_s)
        os.replace(part, final)
    return final


def _download_part(url: str, part: Path, timeout_s: float, bar) -> None:
    """Append the rest of `url` to `part` (a Range request when part of it is there); raises on a short body."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with requests.get(url, headers=headers, stream=True, timeout=(min(timeout_s, 10), timeout_s)) as response:
        if response.status_code == 416 and have:  # the part does not fit the file (changed on the server): start again
            part.unlink()
            raise _Retryable("partial download did not match the file; starting again")
        if response.status_code in RETRY_STATUS:
            raise _Retryable(f"HTTP {response.status_code} {response.reason}")
        if response.status_code not in (200, 206):
            raise LczmapError(f"{url}: HTTP {response.status_code} {response.reason}")
        resumed = response.status_code == 206
        expected = response.headers.get("Content-Length")
        bar.reset(total=(have if resumed else 0) + int(expected) if expected else None)
        bar.update(have if resumed else 0)
        got = 0
        with open(part, "ab" if resumed else "wb") as fh:
            for chunk in response.iter_content(1 << 20):
                fh.write(chunk)
                got += len(chunk)
                bar.update(len(chunk))
        if expected is not None and got < int(expected):
            raise _Retryable(f"body cut short ({got} of {expected} bytes)")


def _clip(extract: Path, bbox: tuple[float, float, float, float], out_path: Path) -> tuple[int, str]:
    """Building ways and multipolygon relations of `extract` that reach `bbox`, complete, into `out_path`; their
    number and the extract's data date (its replication timestamp, else the file's time)."""
    area = osmium.osm.Box(osmium.osm.Location(bbox[0], bbox[1]), osmium.osm.Location(bbox[2], bbox[3]))
    src = str(extract)
    try:
        header = osmium.io.Reader(src, osmium.osm.NOTHING).header()
        stamp = header.get("osmosis_replication_timestamp") or header.get("timestamp")
        members: dict[int, list[int]] = {}  # building relation -> its member ways
        for rel in osmium.FileProcessor(src, osmium.osm.RELATION).with_filter(osmium.filter.KeyFilter("building")):
            members[rel.id] = [m.ref for m in rel.members if m.type == "w"]
        wanted_ways = {w for ws in members.values() for w in ws}
        reaching: set[int] = set()
        tracker = osmium.IdTracker()
        processor = osmium.FileProcessor(src, osmium.osm.NODE | osmium.osm.WAY).with_locations()
        for way in processor.with_filter(osmium.filter.EntityFilter(osmium.osm.WAY)):
            building = "building" in way.tags and way.tags["building"] != "no"
            if (building or way.id in wanted_ways) and any(n.location.valid() and area.contains(n.location) for n in way.nodes):
                reaching.add(way.id)
                if building:
                    tracker.add_way(way.id)
        count = len(tracker.way_ids())
        for rel_id, ways in members.items():
            if any(w in reaching for w in ways):
                tracker.add_relation(rel_id)
                count += 1
        tracker.complete_backward_references(src, relation_depth=1)  # 1: the member ways of the relations too
        with _atomic_osm(out_path, bbox) as writer:
            for obj in osmium.FileProcessor(src).with_filter(tracker.id_filter()):
                writer.add(obj)
    except RuntimeError as exc:  # libosmium's parse and format errors
        raise InputError(f"{extract}: not an OpenStreetMap .osm/.osm.pbf file osmium can read ({describe(exc)})") from None
    date = stamp[:10] if stamp else dt.datetime.fromtimestamp(extract.stat().st_mtime, dt.timezone.utc).date().isoformat()
    return count, date
