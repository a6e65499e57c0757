"""Fetch a city's inputs (Sentinel-2 L2A, elevation, land cover, OpenStreetMap) from public services, by AOI alone,
into one cache and a city folder that the other commands read offline.

The modules, in the order data flows through them:
  catalogs.py   the public STAC catalogues: URLs, collection ids, asset keys (one table)
  stac.py       finding Items (STAC API search, static catalog walk, or the cache offline)
  remote.py     window reads of remote COGs into a chunk cache (threads, timeouts, retries, atomic files)
  sentinel2.py  choosing Sentinel-2 Items by clear observations; band folders with their reflectance rule
  tiles.py      Copernicus DEM and ESA WorldCover tiles merged over the area
  osm.py        OpenStreetMap buildings (Overpass or a PBF extract)
  city.py       all sources for one AOI, the missing-inputs error, city.yaml with provenance
"""

from .city import (SOURCES, FetchOptions, MissingInputsError, fetch_city, fetch_missing, missing_inputs_error,
                   missing_sources)

__all__ = ["SOURCES", "FetchOptions", "MissingInputsError", "fetch_city", "fetch_missing", "missing_inputs_error",
           "missing_sources"]
