"""Write a demo city as the public STAC services lay it out: a static catalog of COGs plus an items.ndjson for API servers.

`DIR/catalog/` gets `catalog.json`, one collection per service under its public id (`sentinel-2-l2a`,
`cop-dem-glo-30`, `esa-worldcover`), one folder per Item holding its JSON and its COG assets, and
`items.ndjson` (every Item, asset hrefs relative to `DIR/catalog/`, to be prefixed with a file server's URL
before loading into a STAC API server). The pixels are the demo city's own files, so a city fetched from the
catalog equals the city given as local files:

- Sentinel-2 L2A as Earth Search v1 has it (`earth-search`): one COG per band, 1024 px blocks, asset keys
  `blue, green, red, rededge1-3, nir, nir08, swir16, swir22, scl`, `raster:bands` scale 0.0001 offset -0.1,
  `earthsearch:boa_offset_applied: false` (the digital numbers still hold the +1000 of baseline 05.10),
  or as the Planetary Computer has it (`planetary-computer`): asset keys `B02 ... B12, B8A, SCL`, no raster:bands,
  the offset known from `s2:processing_baseline` only.
- Copernicus DEM GLO-30 tiles `Copernicus_DSM_COG_10_N37_00_E127_00_DEM` (1 x 1 degree, asset `data`, EPSG:4326).
- ESA WorldCover 2021 v200 tiles `ESA_WorldCover_10m_2021_v200_N36E126` (3 x 3 degrees, asset `map`, product
  version 2.0.0).

The DEM and WorldCover tiles hold only the city's part of the tile (the public tiles are whole; the rest would be
nodata here), on the tile's own pixel grid.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.enums
import rasterio.shutil
import yaml
from rasterio.windows import Window, from_bounds

from ..atomic import replace_path
from ..fetch.catalogs import EARTH_SEARCH_S2
from ..sources.sentinel2 import SCL_CLOUD, read_mtd
from ..sources.sentinel2.radiometry import BASELINE_04_OFFSET, DEFAULT_QUANTIFICATION
from .sentinel2_safe import BANDS_10M

CATALOG_DIR = "catalog"
ITEMS_NDJSON = "items.ndjson"
LAYOUTS = ("earth-search", "planetary-computer")
COG_OPTIONS = dict(driver="COG", BLOCKSIZE=1024, COMPRESS="DEFLATE", OVERVIEWS="AUTO")
STAC_VERSION = "1.0.0"
EXTENSIONS = {
    "eo": "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "proj": "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
}
# Earth Search v1 asset key -> the SAFE band it holds and its pixel size (m).
EARTH_SEARCH_ASSETS = {key: (band, 10 if band in BANDS_10M else 20) for band, key in EARTH_SEARCH_S2.items()}
DEM_COLLECTION, DEM_TILE_DEG = "cop-dem-glo-30", 1
WORLDCOVER_COLLECTION, WORLDCOVER_TILE_DEG = "esa-worldcover", 3
S2_COLLECTION = "sentinel-2-l2a"
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"


def write_catalog(city: Path, layout: str = "earth-search", folder: Path | None = None) -> Path:
    """Write `city`/catalog/ (or `folder`) from the demo city in `city` (its city.yaml, SAFE products, dsm.tif,
    worldcover.tif), Sentinel-2 in `layout`. Built in a temporary folder and moved in whole; returns the folder."""

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    city = Path(city)
    config = yaml.safe_load((city / "city.yaml").read_text())
    safes = config["sentinel2"] if isinstance(config["sentinel2"], list) else [config["sentinel2"]]
    final = Path(folder) if folder else city / CATALOG_DIR
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        items = [_s2_item(city / s, tmp, layout) for s in safes]
        items += _tile_items(city / config["dsm"], tmp, DEM_COLLECTION, DEM_TILE_DEG, _dem_item)
        items += _tile_items(city / config["landcover"], tmp, WORLDCOVER_COLLECTION, WORLDCOVER_TILE_DEG, _worldcover_item)
        _write_collections(tmp, items)
        with open(tmp / ITEMS_NDJSON, "w") as out:
            for item in items:
                out.write(json.dumps(_relative_to_root(item)) + "\n")
        replace_path(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# ---- Sentinel-2 ------------------------------------------------------------------------------------

def _s2_item(safe: Path, root: Path, layout: str) -> dict[str, Any]:
    mtd = read_mtd(safe / "MTD_MSIL2A.xml")
    jp2 = {p.stem: p for p in safe.glob("GRANULE/*/IMG_DATA/R*m/*.jp2")}
    tile, day = next(iter(jp2)).split("_")[0][1:], next(iter(jp2)).split("_")[1][:8]
    sensed = next(iter(jp2)).split("_")[1]
    if layout == "earth-search":
        item_id = f"S2B_{tile}_{day}_0_L2A"
        keys = EARTH_SEARCH_ASSETS
        file_of = {key: f"{band}.tif" for key, (band, _) in keys.items()}
    else:
        item_id = safe.name.removesuffix(".SAFE").replace("_N0510", "")
        keys = {band: (band, res) for band, res in EARTH_SEARCH_ASSETS.values()}
        file_of = {key: f"T{tile}_{sensed}_{band}_{res}m.tif" for key, (band, res) in keys.items()}
    folder = root / S2_COLLECTION / item_id
    folder.mkdir(parents=True)
    assets: dict[str, Any] = {}
    for key, (band, res) in keys.items():
        with rasterio.open(jp2[f"T{tile}_{sensed}_{band}_{res}m"]) as src:
            _write_cog(src, Window(0, 0, src.width, src.height), folder / file_of[key], nodata=0)
        assets[key] = _s2_asset(folder / file_of[key], key, band, res, layout)
    with rasterio.open(folder / file_of["scl" if layout == "earth-search" else "SCL"]) as src:
        scl = src.read(1)
    data = scl != 0
    cloud = float(np.isin(scl, SCL_CLOUD)[data].mean() * 100) if data.any() else 100.0
    with rasterio.open(folder / file_of["blue" if layout == "earth-search" else "B02"]) as src:
        epsg, bounds = src.crs.to_epsg(), src.bounds
    props: dict[str, Any] = {
        "datetime": f"{day[:4]}-{day[4:6]}-{day[6:]}T{sensed[9:11]}:{sensed[11:13]}:{sensed[13:15]}Z",
        "platform": "sentinel-2b", "constellation": "sentinel-2", "instruments": ["msi"],
        "eo:cloud_cover": round(cloud, 4), "proj:epsg": epsg, "s2:processing_baseline": mtd.baseline,
        "s2:product_uri": safe.name, "s2:mgrs_tile": tile,
    }
    if layout == "earth-search":
        props.update({"mgrs:utm_zone": int(tile[:2]), "mgrs:latitude_band": tile[2], "mgrs:grid_square": tile[3:],
                      "earthsearch:boa_offset_applied": False})
    return _item(item_id, S2_COLLECTION, _footprint(bounds, epsg), props, assets, folder)


def _s2_asset(path: Path, key: str, band: str, res: int, layout: str) -> dict[str, Any]:
    with rasterio.open(path) as src:
        shape, transform = [src.height, src.width], list(src.transform)[:6]
    asset: dict[str, Any] = {"href": path.name, "type": COG_TYPE, "title": f"{band} ({res} m)",
                             "roles": ["data"], "gsd": res, "proj:shape": shape, "proj:transform": transform}
    if band != "SCL":
        asset["eo:bands"] = [{"name": band if layout != "earth-search" else key, "common_name": key if layout == "earth-search" else None}]
        asset["eo:bands"][0] = {k: v for k, v in asset["eo:bands"][0].items() if v is not None}
        asset["roles"] = ["data", "reflectance"]
    if layout == "earth-search":
        bands: dict[str, Any] = {"nodata": 0, "data_type": "uint8" if band == "SCL" else "uint16", "spatial_resolution": res}
        if band != "SCL":
            bands.update(bits_per_sample=15, scale=1 / DEFAULT_QUANTIFICATION, offset=BASELINE_04_OFFSET / DEFAULT_QUANTIFICATION)
        asset["raster:bands"] = [bands]
    return asset


# ---- Copernicus DEM and ESA WorldCover tiles --------------------------------------------------------

def _tile_items(raster: Path, root: Path, collection: str, degrees: int, make) -> list[dict[str, Any]]:
    """One Item per `degrees` x `degrees` tile the raster touches, holding the raster's part of that tile as a COG."""
    items = []
    with rasterio.open(raster) as src:
        left, bottom, right, top = src.bounds
        for lat in range(math.floor(bottom / degrees) * degrees, math.ceil(top / degrees) * degrees, degrees):
            for lon in range(math.floor(left / degrees) * degrees, math.ceil(right / degrees) * degrees, degrees):
                window = from_bounds(max(left, lon), max(bottom, lat), min(right, lon + degrees), min(top, lat + degrees),
                                     src.transform).round_offsets().round_lengths()
                if window.width < 1 or window.height < 1:
                    continue
                items.append(make(src, window, lat, lon, root))
    return items


def _write_cog(src: rasterio.DatasetReader, window: Window, path: Path, nodata: float | None = None) -> None:
    """`window` of `src` as a COG at `path` (through a plain GeoTIFF: the COG driver only copies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mem = path.with_suffix(".part.tif")
    profile = {**src.profile, "driver": "GTiff", "width": int(window.width), "height": int(window.height),
               "transform": src.window_transform(window), "nodata": src.nodata if nodata is None else nodata}
    for key in ("blockxsize", "blockysize", "tiled", "compress", "interleave"):
        profile.pop(key, None)
    with rasterio.open(mem, "w", **profile) as dst:
        dst.write(src.read(window=window))
        if src.colorinterp[0] == rasterio.enums.ColorInterp.palette:  # WorldCover's legend colours
            dst.write_colormap(1, src.colormap(1))
    rasterio.shutil.copy(mem, path, **COG_OPTIONS)
    mem.unlink()


def _ns(value: int, pos: str, neg: str, width: int) -> str:
    return f"{pos if value >= 0 else neg}{abs(value):0{width}d}"


def _dem_item(src: rasterio.DatasetReader, window: Window, lat: int, lon: int, root: Path) -> dict[str, Any]:
    item_id = f"Copernicus_DSM_COG_10_{_ns(lat, 'N', 'S', 2)}_00_{_ns(lon, 'E', 'W', 3)}_00_DEM"
    folder = root / DEM_COLLECTION / item_id
    _write_cog(src, window, folder / f"{item_id}.tif")
    props = {"datetime": "2021-04-22T00:00:00Z", "platform": "TanDEM-X", "gsd": 30, "proj:epsg": 4326}
    asset = {"href": f"{item_id}.tif", "type": COG_TYPE, "title": f"{item_id}.tif", "roles": ["data"],
             "raster:bands": [{"data_type": "float32", "spatial_resolution": 30, "unit": "metre"}]}
    return _item(item_id, DEM_COLLECTION, _box(lon, lat, lon + 1, lat + 1), props, {"data": asset}, folder)


def _worldcover_item(src: rasterio.DatasetReader, window: Window, lat: int, lon: int, root: Path) -> dict[str, Any]:
    item_id = f"ESA_WorldCover_10m_2021_v200_{_ns(lat, 'N', 'S', 2)}{_ns(lon, 'E', 'W', 3)}"
    folder = root / WORLDCOVER_COLLECTION / item_id
    _write_cog(src, window, folder / f"{item_id}_Map.tif")
    props = {"datetime": None, "start_datetime": "2021-01-01T00:00:00Z", "end_datetime": "2021-12-31T23:59:59Z",
             "esa_worldcover:product_version": "2.0.0", "proj:epsg": 4326, "mission": "sentinel-1, sentinel-2"}
    asset = {"href": f"{item_id}_Map.tif", "type": COG_TYPE, "title": "Land Cover Classes", "roles": ["data"],
             "raster:bands": [{"data_type": "uint8", "nodata": 0, "spatial_resolution": 10}]}
    return _item(item_id, WORLDCOVER_COLLECTION, _box(lon, lat, lon + 3, lat + 3), props, {"map": asset}, folder)


# ---- STAC documents ---------------------------------------------------------------------------------

def _box(w: float, s: float, e: float, n: float) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def _footprint(bounds: Any, epsg: int) -> dict[str, Any]:
    from rasterio.warp import transform_geom

    return transform_geom(f"EPSG:{epsg}", "EPSG:4326", _box(*bounds), precision=7)


def _item(item_id: str, collection: str, geometry: dict, props: dict, assets: dict, folder: Path) -> dict[str, Any]:
    coords = np.array(geometry["coordinates"][0])
    item = {
        "type": "Feature", "stac_version": STAC_VERSION, "stac_extensions": list(EXTENSIONS.values()), "id": item_id,
        "collection": collection, "geometry": geometry,
        "bbox": [*map(float, coords.min(axis=0)), *map(float, coords.max(axis=0))], "properties": props,
        "links": [{"rel": "collection", "href": "../collection.json", "type": "application/json"},
                  {"rel": "parent", "href": "../collection.json", "type": "application/json"},
                  {"rel": "root", "href": "../../catalog.json", "type": "application/json"}],
        "assets": assets,
    }
    (folder / f"{item_id}.json").write_text(json.dumps(item, indent=1))
    return item


def _relative_to_root(item: dict[str, Any]) -> dict[str, Any]:
    """The Item for items.ndjson: asset hrefs relative to the catalog folder, no relative links."""
    prefix = f"{item['collection']}/{item['id']}/"
    assets = {k: {**a, "href": prefix + a["href"]} for k, a in item["assets"].items()}
    return {**item, "links": [], "assets": assets}


_TITLES = {
    S2_COLLECTION: ("Sentinel-2 Level-2A", "proprietary", "Copernicus Sentinel data"),
    DEM_COLLECTION: ("Copernicus DEM GLO-30", "proprietary", "Copernicus DEM GLO-30 (c) DLR e.V. 2010-2014 and (c) Airbus"),
    WORLDCOVER_COLLECTION: ("ESA WorldCover", "CC-BY-4.0", "(c) ESA WorldCover project 2021 / Contains modified Copernicus Sentinel data"),
}


def _write_collections(root: Path, items: list[dict[str, Any]]) -> None:
    links = [{"rel": "root", "href": "./catalog.json", "type": "application/json"}]
    for collection in sorted({i["collection"] for i in items}):
        members = [i for i in items if i["collection"] == collection]
        bboxes = np.array([i["bbox"] for i in members])
        times = sorted(i["properties"].get("datetime") or i["properties"]["start_datetime"] for i in members)
        title, licence, attribution = _TITLES[collection]
        doc = {
            "type": "Collection", "stac_version": STAC_VERSION, "id": collection, "title": title,
            "description": f"{title} (lczmap demo city, laid out as the public service lays it out)",
            "license": licence, "providers": [{"name": attribution, "roles": ["licensor"]}],
            "extent": {"spatial": {"bbox": [[*bboxes[:, :2].min(axis=0), *bboxes[:, 2:].max(axis=0)]]},
                       "temporal": {"interval": [[times[0], times[-1]]]}},
            "links": [{"rel": "root", "href": "../catalog.json", "type": "application/json"},
                      {"rel": "parent", "href": "../catalog.json", "type": "application/json"}]
                     + [{"rel": "item", "href": f"./{i['id']}/{i['id']}.json", "type": "application/geo+json"} for i in members],
        }
        (root / collection / "collection.json").write_text(json.dumps(doc, indent=1))
        links.append({"rel": "child", "href": f"./{collection}/collection.json", "type": "application/json", "title": title})
    catalog = {"type": "Catalog", "stac_version": STAC_VERSION, "id": "lczmap-demo",
               "description": "The lczmap demo city as Sentinel-2 L2A, Copernicus DEM and ESA WorldCover STAC collections",
               "links": links}
    (root / "catalog.json").write_text(json.dumps(catalog, indent=1))
