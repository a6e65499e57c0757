"""Sentinel-2 L2A over a city from a STAC catalogue: choose Items until every AOI pixel has enough clear
observations, read the windows of their bands, and write each Item as a band folder the Sentinel-2 reader opens.

Items are taken least cloudy first (then newest). Their scene classification (SCL) windows are read first, a
batch at a time, and tallied per day on a 20 m grid of the city: Items are added until every AOI pixel has
`min_clear` clear observations (or `max_items` are taken, or none are left); an Item with no clear pixel over the
AOI is passed over without reading its bands. The reflectance rule of each Item comes from its own metadata
(`radiometry`) and is written into every band file as GDAL scale/offset, which the reader applies first.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry
from rasterio.enums import Resampling
from rasterio.features import rasterize
from rasterio.warp import reproject

from ..atomic import replace_path
from ..errors import LczmapError
from ..sources.sentinel2 import S2_BANDS, SCL_MASKED
from ..sources.sentinel2.radiometry import BASELINE_04_OFFSET, BASELINE_04_START, DEFAULT_QUANTIFICATION, baseline_at_least_4
from .catalogs import ATTRIBUTION, LICENCE, Collection, s2_asset_keys
from .remote import Asset, NotCached, Remote, drop_stale, host_of, safe_name, write_raster
from .stac import item_date, search

log = logging.getLogger(__name__)

TALLY_FACTOR = 2  # the clear-observation tally runs on a 20 m version of the 10 m base grid
SCL_BATCH = 8  # SCL windows read at once while choosing Items


@dataclass(frozen=True)
class Choice:
    """What to fetch: how many clear observations per pixel, how many Items at most, which clouds to accept."""

    datetime: str
    max_cloud: float
    min_clear: int
    max_items: int


def radiometry(item: dict[str, Any], asset: dict[str, Any]) -> tuple[float, float, str]:
    """(scale, offset, where it was read) of one band asset, from the Item's metadata only.

    `earthsearch:boa_offset_applied: true`: Earth Search already removed the baseline >= 04.00 offset from the
    digital numbers, so none is applied again whatever raster:bands says. Otherwise `s2:processing_baseline`
    decides (>= 04.00: the asset's raster:bands offset, else -1000 DN); without it raster:bands is taken as stated;
    without either the sensing date decides (baseline 04.00 began on 2022-01-25).
    """
    props = item.get("properties") or {}
    declared = (asset.get("raster:bands") or [{}])[0]
    scale = float(declared.get("scale", 1 / DEFAULT_QUANTIFICATION))
    standard = BASELINE_04_OFFSET / DEFAULT_QUANTIFICATION
    if props.get("earthsearch:boa_offset_applied") is True:
        return scale, 0.0, "earthsearch:boa_offset_applied (offset already removed from the pixel values)"
    baseline = props.get("s2:processing_baseline")
    if baseline is not None:
        if baseline_at_least_4(str(baseline)):
            return scale, float(declared.get("offset") or standard), f"s2:processing_baseline {baseline}"
        return scale, 0.0, f"s2:processing_baseline {baseline}"
    if "offset" in declared:
        return scale, float(declared["offset"]), "raster:bands"
    after = item_date(item) >= BASELINE_04_START
    return scale, standard if after else 0.0, f"sensing date {item_date(item)} ({'after' if after else 'before'} baseline 04.00)"


def fetch_sentinel2(collection: Collection, aoi: Geometry, region: Geometry, tally_box: GeoBox, choice: Choice,
                    remote: Remote, out: Path) -> tuple[Path, dict[str, Any]]:
    """Fetch the Items and write their band folders into `out` (replaced whole); return it and the provenance."""
    area = region.to_crs("EPSG:4326").geom
    items = search(collection, area, choice.datetime, remote.settings,
                   keep=lambda i: _cloud(i) <= choice.max_cloud, query={"eo:cloud_cover": {"lte": choice.max_cloud}})
    skipped: list[dict[str, str]] = []
    usable = []
    for item in items:
        keys = s2_asset_keys(collection, set(item.get("assets") or {}))
        if keys is None:
            skipped.append({"id": item["id"], "reason": "no Sentinel-2 band assets in a known layout"})
        else:
            usable.append((item, keys))
    usable.sort(key=lambda ik: item_date(ik[0]), reverse=True)
    usable.sort(key=lambda ik: _cloud(ik[0]))  # least cloudy first, newest first among equals
    if not usable:
        where = "in the cache" if remote.settings.offline else f"at {collection.url}"
        raise (NotCached if remote.settings.offline else LczmapError)(
            f"no {collection.id} Items over the AOI {where} in {choice.datetime} with at most {choice.max_cloud:g} % cloud")

    aoi_mask = rasterize([aoi.to_crs(tally_box.crs).geom], out_shape=tally_box.shape, transform=tally_box.affine,
                         fill=0, default_value=1, dtype="uint8").astype(bool)
    clear_by_day: dict[str, np.ndarray] = {}
    chosen: list[tuple[dict, dict[str, str]]] = []
    done = False
    for start in range(0, len(usable), SCL_BATCH):
        if done:
            break
        batch = usable[start : start + SCL_BATCH]
        scl = {item["id"]: _asset(collection.url, collection.id, item, keys["SCL"]) for item, keys in batch}
        grids, failed = remote.read(list(scl.values()), region, "Sentinel-2 SCL")
        for item, keys in batch:
            asset = scl[item["id"]]
            if asset in failed:
                skipped.append({"id": item["id"], "reason": f"scene classification: {failed[asset]}"})
                continue
            data, transform, crs, _ = remote.mosaic([(asset, grids[asset])], region)
            tally = np.zeros(tally_box.shape, np.uint8)
            reproject(data, tally, src_transform=transform, src_crs=crs, dst_transform=tally_box.affine,
                      dst_crs=tally_box.crs.to_wkt(), resampling=Resampling.nearest, src_nodata=0, dst_nodata=0)
            clear = ~np.isin(tally, SCL_MASKED) & aoi_mask
            if not clear.any():
                skipped.append({"id": item["id"], "reason": "no clear pixel over the AOI"})
                continue
            day = item_date(item)
            clear_by_day[day] = clear_by_day.get(day, np.zeros_like(clear)) | clear
            chosen.append((item, keys))
            done = len(chosen) >= choice.max_items or bool((_clear_count(clear_by_day, aoi_mask)[aoi_mask] >= choice.min_clear).all())
            if done:
                break

    assets = {(item["id"], band): _asset(collection.url, collection.id, item, keys[band])
              for item, keys in chosen for band in (*S2_BANDS, "SCL")}
    grids, failed = remote.read(list(assets.values()), region, "Sentinel-2")
    kept = []
    for item, keys in chosen:
        bad = [(band, failed[a]) for (iid, band), a in assets.items() if iid == item["id"] and a in failed]
        if bad:
            band, exc = bad[0]
            skipped.append({"id": item["id"], "reason": f"{band}: {exc} (one observation fewer)"})
            log.warning("%s: skipped, %s: %s; the composite has one observation fewer", item["id"], band, exc)
        else:
            kept.append((item, keys))
    if not kept:
        reasons = "; ".join(f"{s['id']}: {s['reason']}" for s in skipped[:3])
        raise (NotCached if remote.settings.offline else LczmapError)(
            f"none of the {len(usable)} {collection.id} Items over the AOI could be read ({reasons})")

    drop_stale(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    records = []
    try:
        for item, keys in kept:
            folder = tmp / _folder_name(item)
            rules = {}
            for band in (*S2_BANDS, "SCL"):
                asset = assets[(item["id"], band)]
                data, transform, crs, nodata = remote.mosaic([(asset, grids[asset])], region)
                rule = None if band == "SCL" else radiometry(item, item["assets"][keys[band]])
                write_raster(folder / f"{band}.tif", data, transform, crs, 0 if nodata is None else nodata,
                             scale_offset=rule[:2] if rule else None, description=band)
                if rule:
                    rules[band] = rule
            records.append(_record(item, rules, collection.url))
        replace_path(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    in_aoi = _clear_count(clear_by_day, aoi_mask)[aoi_mask]
    provenance = {
        "catalog": collection.url, "collection": collection.id, "datetime": choice.datetime,
        "max_cloud": choice.max_cloud, "min_clear": choice.min_clear,
        "clear_observations": {"min": int(in_aoi.min()) if in_aoi.size else 0,
                               "median": float(np.median(in_aoi)) if in_aoi.size else 0.0},
        "items": records, "skipped": skipped,
        "licence": LICENCE["sentinel2"], "attribution": ATTRIBUTION["sentinel2"],
    }
    return out, provenance


def _asset(url: str, collection: str, item: dict[str, Any], key: str) -> Asset:
    return Asset(host_of(url), collection, item["id"], key, str(item["assets"][key]["href"]))


def _cloud(item: dict[str, Any]) -> float:
    value = (item.get("properties") or {}).get("eo:cloud_cover")
    return float(value) if isinstance(value, (int, float)) else 100.0


def _clear_count(clear_by_day: dict[str, np.ndarray], aoi_mask: np.ndarray) -> np.ndarray:
    """Clear observations per tally pixel: days with at least one clear Item there."""
    count = np.zeros(aoi_mask.shape, np.uint16)
    for clear in clear_by_day.values():
        count += clear
    return count


def _folder_name(item: dict[str, Any]) -> str:
    """The Item id as a folder name, with its date in front when the id lacks it (the reader takes the date from it)."""
    name = safe_name(item["id"])
    day = item_date(item).replace("-", "")
    return name if not day or day in re.sub(r"[-_]", "", name) else f"{day}_{name}"


def _record(item: dict[str, Any], rules: dict[str, tuple[float, float, str]], url: str) -> dict[str, Any]:
    props = item.get("properties") or {}
    link = next((ln.get("href") for ln in item.get("links") or [] if ln.get("rel") == "self"), None)
    scales = {(s, o, src) for s, o, src in rules.values()}
    scale, offset, source = next(iter(scales)) if len(scales) == 1 else (None, None, "per band")
    return {
        "id": item["id"], "url": link or f"{url}/collections/{item.get('collection')}/items/{item['id']}",
        "datetime": props.get("datetime"), "cloud_cover": props.get("eo:cloud_cover"),
        "processing_baseline": props.get("s2:processing_baseline"),
        "reflectance": {"scale": scale, "offset": offset, "from": source},
    }
