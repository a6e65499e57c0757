"""The public STAC catalogues lczmap fetches from: their URLs, collection ids and asset keys, in one table.

A built-in name (`earth-search`, `planetary-computer`) or the URL of any STAC API (or static catalog) that lays
its collections out the same way selects a `Catalog`. Asset keys are matched by layout: a catalogue given by URL
may use either built-in layout, and each Item is read with the layout whose keys it has.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import OptionError
from ..sources.sentinel2 import S2_BANDS

S2_BANDS_AND_SCL = (*S2_BANDS, "SCL")

# Sentinel-2 L2A asset keys (lczmap band -> asset key), per layout.
EARTH_SEARCH_S2 = dict(zip(S2_BANDS_AND_SCL, ("blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir",
                                             "nir08", "swir16", "swir22", "scl")))
PLANETARY_COMPUTER_S2 = {band: band for band in S2_BANDS_AND_SCL}
S2_LAYOUTS = (EARTH_SEARCH_S2, PLANETARY_COMPUTER_S2)

# What each source's data may be used for, quoted in city.yaml's provenance and the README.
ATTRIBUTION = {
    "sentinel2": ("Contains modified Copernicus Sentinel data (Copernicus Sentinel data terms: free, full and open)"),
    "dem": "Copernicus DEM GLO-30 (c) DLR e.V. 2010-2014 and (c) Airbus Defence and Space GmbH 2014-2018, "
           "provided under COPERNICUS by the European Union and ESA",
    "landcover": "ESA WorldCover 10 m (c) ESA WorldCover project / Contains modified Copernicus Sentinel data, CC BY 4.0",
    "osm": "(c) OpenStreetMap contributors, ODbL 1.0",
}
LICENCE = {"sentinel2": "Copernicus Sentinel data terms", "dem": "Copernicus DEM licence (free, with attribution)",
           "landcover": "CC-BY-4.0", "osm": "ODbL-1.0"}


@dataclass(frozen=True)
class Collection:
    """One source's collection in a catalogue: the API that holds it, its id and the asset key of each layer."""

    url: str
    id: str
    assets: dict[str, str]  # lczmap layer -> asset key (Sentinel-2: per band; DEM/land cover: 'data')
    signer: str | None = None  # the module that signs its asset URLs (an optional package)


@dataclass(frozen=True)
class Catalog:
    """A STAC catalogue lczmap knows how to read: where each source's collection lives."""

    name: str
    sentinel2: Collection
    dem: Collection
    landcover: Collection
    note: str = ""


EARTH_SEARCH_URL = "https://earth-search.aws.element84.com/v1"
PLANETARY_COMPUTER_URL = "https://planetarycomputer.microsoft.com/api/stac/v1"
PC_SIGNER = "planetary_computer"

CATALOGS = {
    "earth-search": Catalog(
        "earth-search",
        Collection(EARTH_SEARCH_URL, "sentinel-2-l2a", EARTH_SEARCH_S2),
        Collection(EARTH_SEARCH_URL, "cop-dem-glo-30", {"data": "data"}),
        # Earth Search holds no WorldCover: it comes from the Planetary Computer (signed, needs its package).
        Collection(PLANETARY_COMPUTER_URL, "esa-worldcover", {"data": "map"}, PC_SIGNER),
        note="Element 84 Earth Search v1 on AWS (no sign-up); land cover from the Planetary Computer",
    ),
    "planetary-computer": Catalog(
        "planetary-computer",
        Collection(PLANETARY_COMPUTER_URL, "sentinel-2-l2a", PLANETARY_COMPUTER_S2, PC_SIGNER),
        Collection(PLANETARY_COMPUTER_URL, "cop-dem-glo-30", {"data": "data"}, PC_SIGNER),
        Collection(PLANETARY_COMPUTER_URL, "esa-worldcover", {"data": "map"}, PC_SIGNER),
        note="Microsoft Planetary Computer (asset URLs signed by the planetary-computer package, no sign-up)",
    ),
}
DEFAULT_CATALOG = "earth-search"
SIGNER_PACKAGE = {PC_SIGNER: "planetary-computer"}  # module -> pip name (the `planetary-computer` extra)


def resolve_catalog(name_or_url: str) -> Catalog:
    """The built-in catalogue of that name, or a catalogue at that URL laid out like the built-in ones (every source
    from that URL; the Planetary Computer's URL keeps its signing)."""
    if name_or_url in CATALOGS:
        return CATALOGS[name_or_url]
    if "://" not in name_or_url:
        raise OptionError(f"--catalog {name_or_url}: not a known catalogue ({', '.join(CATALOGS)}) nor a URL")
    url = name_or_url.rstrip("/")
    signer = PC_SIGNER if url == PLANETARY_COMPUTER_URL else None
    base = CATALOGS[DEFAULT_CATALOG]
    return Catalog(
        url,
        replace(base.sentinel2, url=url, assets={}, signer=signer),  # {}: either layout, told per Item
        replace(base.dem, url=url, signer=signer),
        replace(base.landcover, url=url, signer=signer),
    )


def s2_asset_keys(collection: Collection, asset_keys: set[str]) -> dict[str, str] | None:
    """lczmap band -> asset key for an Item with `asset_keys`: the collection's layout, else the first built-in
    layout the Item has every key of; None when it has neither."""
    layouts = (collection.assets,) if collection.assets else S2_LAYOUTS
    return next((dict(layout) for layout in layouts if set(layout.values()) <= asset_keys), None)
