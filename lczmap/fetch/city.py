"""Every input of a city from its AOI alone: fetch each source over the AOI plus the patch margin into a folder and
write the city.yaml (with provenance) that `predict --config`, `stage` and `train --city` then read offline."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from odc.geo.geom import Geometry

from .. import __version__
from ..aoi import read_aoi
from ..config import CityConfig, cache_root, load_city_config
from ..errors import LczmapError
from ..grid import OUTPUT_RESOLUTION, CityGrid, city_grid
from ..sources.sentinel2.stac import parse_datetime
from .catalogs import DEFAULT_CATALOG, resolve_catalog
from .remote import Remote, Settings
from .sentinel2 import TALLY_FACTOR, Choice, fetch_sentinel2
from .stac import default_datetime
from .tiles import fetch_dem, fetch_landcover

log = logging.getLogger(__name__)

SOURCES = ("sentinel2", "dsm", "landcover", "osm")
CITY_YAML = "city.yaml"
# What each source is called in messages, and how to get it without fetching.
LABELS = {"sentinel2": "Sentinel-2 L2A", "dsm": "elevation (Copernicus DEM GLO-30)",
          "landcover": "land cover (ESA WorldCover)", "osm": "OpenStreetMap buildings"}
HOW_TO_GET = {
    "sentinel2": "pass --s2 PATH (.SAFE, band folder or STAC Item)",
    "dsm": "pass --dsm FILE (a surface-model GeoTIFF)",
    "landcover": "pass --landcover FILE (an ESA WorldCover GeoTIFF)",
    "osm": "pass --osm FILE (.osm or .osm.pbf)",
}


class MissingInputsError(LczmapError):
    """Inputs that could be neither found locally nor fetched, all named in one line with how to get each."""


@dataclass(frozen=True)
class FetchOptions:
    """What `lczmap fetch` (and `predict --aoi` without inputs) fetches, from where, and how."""

    catalog: str = DEFAULT_CATALOG
    datetime: str | None = None  # STAC interval; None: the 12 months before today
    max_cloud: float = 50.0  # % cloud of a Sentinel-2 Item at most
    min_clear: int = 3  # clear observations wanted per pixel
    max_items: int = 12  # Sentinel-2 Items at most
    osm: str = "overpass"  # overpass | URL of a PBF extract | FILE
    offline: bool = False  # the cache only
    landcover_year: int = 2021
    sources: tuple[str, ...] = SOURCES
    cache: Path | None = None  # None: $LCZMAP_CACHE/fetch
    timeout_s: float = 30.0
    retries: int = 4
    backoff_s: float = 1.0
    threads: int = 16
    progress: bool = True

    def settings(self) -> Settings:
        return Settings(cache=Path(self.cache) if self.cache else cache_root() / "fetch", offline=self.offline,
                        timeout_s=self.timeout_s, retries=self.retries, backoff_s=self.backoff_s,
                        threads=self.threads, progress=self.progress)


def fetch_city(aoi_path: str | Path, out_dir: str | Path, options: FetchOptions = FetchOptions()) -> Path:
    """Fetch `options.sources` over the AOI (plus the patch margin) into `out_dir` and write `out_dir/city.yaml`.

    Every source is tried; those that cannot be had (offline and not cached, a catalogue unreachable, nothing
    found) are named together in one MissingInputsError, and then no city.yaml is written.
    """
    unknown = set(options.sources) - set(SOURCES)
    if unknown:
        raise LczmapError(f"unknown sources {sorted(unknown)}; known: {', '.join(SOURCES)}")
    parse_datetime(options.datetime)  # bad options are refused before anything is read
    catalog = resolve_catalog(options.catalog)
    aoi_path, out_dir = Path(aoi_path), Path(out_dir)
    grid = city_grid(read_aoi(aoi_path))
    region = fetch_region(grid)
    remote = Remote(options.settings())
    out_dir.mkdir(parents=True, exist_ok=True)
    choice = Choice(options.datetime or default_datetime(), options.max_cloud, options.min_clear, options.max_items)
    jobs = {
        "sentinel2": lambda: fetch_sentinel2(catalog.sentinel2, grid.aoi, region, grid.base.zoom_out(TALLY_FACTOR),
                                             choice, remote, out_dir / "sentinel2"),
        "dsm": lambda: fetch_dem(catalog.dem, region, remote, out_dir / "dsm.tif"),
        "landcover": lambda: fetch_landcover(catalog.landcover, region, options.landcover_year, remote,
                                             out_dir / "landcover.tif"),
        "osm": lambda: _fetch_osm(region, options, out_dir),
    }
    files: dict[str, Path] = {}
    provenance: dict[str, Any] = {}
    missing: list[tuple[str, LczmapError]] = []
    for source in options.sources:
        try:
            files[source], provenance[source] = jobs[source]()
        except LczmapError as exc:
            missing.append((source, exc))
            continue
        got = provenance[source]
        log.info("%s: %s from %s into %s", LABELS[source], f"{len(got['items'])} item(s)" if "items" in got else "fetched",
                 got.get("catalog") or got.get("url") or got.get("file") or got.get("source"), files[source])
    if missing:
        raise missing_inputs_error(missing, aoi_path, options.offline)
    return _write_city_yaml(aoi_path, out_dir, files, provenance, options)


def missing_sources(config: CityConfig) -> tuple[str, ...]:
    """The fetchable inputs a city lacks (OSM read online by staging, osm_online, counts as given)."""
    return tuple(s for s in SOURCES if getattr(config, s) is None and not (s == "osm" and config.osm_online))


def fetch_missing(config: CityConfig, options: FetchOptions) -> CityConfig:
    """`config` with `options.sources` fetched over its AOI into a city folder in the cache
    ($LCZMAP_CACHE/cities/<AOI and options key>) and set as its inputs, with their provenance."""
    if not options.sources:
        return config
    read_aoi(config.aoi)  # the AOI's checks (file type, size, geometry) before its bytes key the cache
    where = "the cache only (--offline)" if options.offline else options.catalog + (
        f", OSM from {options.osm}" if "osm" in options.sources else "")
    log.info("Fetching %s (not given) from %s", ", ".join(LABELS[s] for s in options.sources), where)
    key = hashlib.sha256(Path(config.aoi).read_bytes())
    key.update(repr((options.catalog, options.datetime, options.max_cloud, options.min_clear, options.max_items,
                     options.osm, options.landcover_year, sorted(options.sources))).encode())
    root = Path(options.cache).parent if options.cache else cache_root()
    fetched = load_city_config(fetch_city(config.aoi, root / "cities" / f"{Path(config.aoi).stem}-{key.hexdigest()[:12]}",
                                          options))
    return replace(config, **{s: getattr(fetched, s) for s in options.sources}, provenance=fetched.provenance)


def fetch_region(grid: CityGrid) -> Geometry:
    """What is fetched for a city: its base grid (the AOI's output cells plus half a 48 px patch), plus one output
    cell for resampling and for a coarser --resolution's snapping."""
    return grid.base.extent.buffer(OUTPUT_RESOLUTION)


def missing_inputs_error(missing: list[tuple[str, LczmapError | str]], aoi_path: Path, offline: bool) -> MissingInputsError:
    """One error naming every missing input, why it is missing and how to get it."""
    fetch = f"run `lczmap fetch --aoi {aoi_path}` online" if offline else "try another --catalog"
    parts = [f"{LABELS[s]} ({str(exc).rstrip('.')}; {HOW_TO_GET[s]}, or {fetch})" for s, exc in missing]
    return MissingInputsError(f"{len(missing)} input(s) missing for {aoi_path}: " + "; ".join(parts))


def _fetch_osm(region: Geometry, options: FetchOptions, out_dir: Path) -> tuple[Path, dict[str, Any]]:
    """OpenStreetMap buildings over the area (lczmap.fetch.osm: Overpass through osmnx, or a PBF extract)."""
    from .osm import fetch_osm  # osmium and osmnx: only when OSM is fetched

    out = out_dir / "buildings.osm"
    settings = options.settings()
    provenance = fetch_osm(options.osm, region, out, settings.cache, settings.offline, timeout_s=settings.timeout_s,
                           retries=settings.retries, backoff_s=settings.backoff_s, progress=settings.progress)
    return out, provenance


def _write_city_yaml(aoi_path: Path, out_dir: Path, files: dict[str, Path], provenance: dict[str, Any],
                     options: FetchOptions) -> Path:
    """city.yaml beside the fetched files (paths relative to it), checked by loading it before it is renamed in."""
    aoi_local = _local_aoi(aoi_path, out_dir)
    doc: dict[str, Any] = {"name": aoi_path.stem, "aoi": _relative(aoi_local, out_dir)}
    doc.update({source: _relative(path, out_dir) for source, path in files.items()})
    if "landcover" in files:
        doc["landcover_scheme"] = "worldcover"
    doc["provenance"] = {
        "fetched": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "lczmap": __version__,
        "catalog": options.catalog, **provenance,
        "credits": "; ".join(p["attribution"] for p in provenance.values() if isinstance(p, dict) and "attribution" in p),
    }
    final = out_dir / CITY_YAML
    tmp = out_dir / f".{CITY_YAML}.{os.getpid()}.tmp"
    try:
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
        load_city_config(tmp)  # the contract: what we write must load
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def _local_aoi(aoi_path: Path, out_dir: Path) -> Path:
    """The AOI beside city.yaml: a one-file AOI (GeoJSON, GeoPackage) is copied in, others are named where they are."""
    if aoi_path.resolve().parent == out_dir.resolve():
        return aoi_path
    if aoi_path.suffix.lower() in (".geojson", ".json", ".gpkg"):
        target = out_dir / f"aoi{aoi_path.suffix.lower()}"
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.copyfile(aoi_path, tmp)
        os.replace(tmp, target)
        return target
    return aoi_path.resolve()


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path.resolve())
