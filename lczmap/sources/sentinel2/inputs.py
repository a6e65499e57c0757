"""What the user named as Sentinel-2 input (paths, folders of products, STAC Items and ItemCollections) opened as
checked products: each form recognised, unusable products skipped with the reason, duplicates used once."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from odc.geo.geom import Geometry

from ...errors import LczmapError
from ..base import check_exists, is_remote
from .bands import RASTER_SUFFIXES, SCL_MASKED, SCL_SNOW, is_band_folder
from .composite import COMPOSITES, Sentinel2Composite, preview_products
from .facts import check_tile
from .product import Sentinel2Source, from_folder, from_multiband, from_safe
from .stac import stac_item_source

log = logging.getLogger(__name__)


def open_sentinel2(path: str | Path, aoi: Geometry | None) -> Sentinel2Source:
    """Recognise the form of one product, check every band file once, and return a readable source.

    With `aoi`, a product that does not overlap it is refused; None leaves that check to the caller.
    """
    href = str(path)
    check_exists(href, "Sentinel-2 input")
    p = Path(href)
    if not is_remote(href) and p.is_dir():
        if (p / "GRANULE").is_dir():
            return from_safe(p, aoi)
        return from_folder(p, aoi)
    if p.suffix.lower() == ".json":
        return _from_stac(href, aoi)
    return from_multiband(href, aoi)


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


def _check_tile(src: Sentinel2Source) -> None:
    check_tile(src.path, src.info.get("tile"), src.crs_label)


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


def _is_stac(doc: Any) -> bool:
    return isinstance(doc, dict) and (doc.get("type") == "FeatureCollection"
                                      or (doc.get("type") == "Feature" and isinstance(doc.get("assets"), dict)))


def _stac_documents(folder: Path) -> list[tuple[Path, Any]]:
    """The STAC Items and ItemCollections among a folder's JSON files; any other JSON (a sidecar such as
    BigEarthNet's `*_labels_metadata.json`, beside band files) is left aside with a debug line."""
    found = []
    for f in sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() == ".json"):
        try:
            doc = _read_json(str(f))
        except LczmapError as exc:
            log.debug("ignored: %s", exc)
            continue
        if _is_stac(doc):
            found.append((f, doc))
        else:
            log.debug("%s: ignored: JSON that is not a STAC Item or ItemCollection", f)
    return found


def _json_entries(href: str, doc: Any) -> list[_Entry]:
    """The products a STAC JSON document names: the Items of an ItemCollection, or the document itself."""
    base = Path(href).resolve().parent
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        items = doc.get("features")
        if not isinstance(items, list) or not items:
            raise LczmapError(f"{href}: a STAC ItemCollection without items")
        return [_Entry(f"{href}#{item.get('id', k) if isinstance(item, dict) else k}", item, base)
                for k, item in enumerate(items)]
    return [_Entry(href, doc, base)]


def _expand(href: str) -> list[_Entry]:
    """The products `href` names: itself, the Items of an ItemCollection, or every product in a folder of products."""
    check_exists(href, "Sentinel-2 input")
    p = Path(href)
    if is_remote(href):
        return [_Entry(href)]
    if p.is_dir():
        if (p / "GRANULE").is_dir():
            return [_Entry(href)]
        stac = _stac_documents(p)
        if not stac and is_band_folder(p):
            return [_Entry(href)]
        # A folder of products: STAC JSON files (their assets may sit beside them), sub-folders, multi-band rasters.
        subdirs = sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
        rasters = [] if stac else sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in RASTER_SUFFIXES)
        entries = [e for f, doc in stac for e in _json_entries(str(f), doc)]
        entries += [e for m in (*subdirs, *rasters) for e in _expand(str(m))]
        if not entries:
            raise LczmapError(f"{p}: folder holds no Sentinel-2 product (.SAFE, band files, GeoTIFF or STAC JSON)")
        return entries
    if p.suffix.lower() == ".json":
        return _json_entries(href, _read_json(href))
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


def open_products(paths: Any, grid: Any, composite: str = "median", mask_snow: bool = False) -> Sentinel2Composite:
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
                skip(entry.where, str(exc).removeprefix(f"{entry.where}: ").strip() or type(exc).__name__)
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
    preview = preview_products(products, grid, masked)
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
