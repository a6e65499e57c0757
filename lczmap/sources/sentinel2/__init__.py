"""Sentinel-2 L2A (.SAFE, band-file folder, multi-band GeoTIFF, STAC Item or ItemCollection, or a folder of these)
as 10 reflectance bands, SCL-masked, composited per pixel across products.

Reflectance = DN * scale + offset per band, decided per product (radiometry.py), so products of mixed processing
baselines composite correctly. 20 m bands are resampled bilinearly; the scene classification (SCL) nearest, and
SCL classes 0, 1, 3, 8, 9, 10 (nodata, saturated/defective, cloud shadow, clouds, cirrus; optionally 11, snow)
make a pixel's observation invalid.

The modules, in the order data flows through them:
  bands.py       the bands lczmap stacks, the SCL classes it masks, which band a name denotes
  facts.py       a product's id, date, tile and orbit from its names
  radiometry.py  how digital numbers become reflectance, and the `scaling` record of that choice
  product.py     one .SAFE, band folder or multi-band raster as a source
  stac.py        a STAC Item as a source, the search of a STAC API or static catalogue, the --datetime parser
  composite.py   several products composited per pixel
  inputs.py      what the user named, opened as checked products (the front door: open_products)
"""

from .bands import S2_BANDS, SCL_CLOUD, SCL_MASKED, SCL_SNOW, band_name
from .composite import COMPOSITES, Sentinel2Composite
from .inputs import as_paths, open_products, open_sentinel2
from .product import BandRef, Sentinel2Source
from .radiometry import read_mtd
from .stac import STAC_COLLECTION, DateRange, parse_datetime, stac_item_source

__all__ = [
    "S2_BANDS", "SCL_CLOUD", "SCL_MASKED", "SCL_SNOW", "band_name", "COMPOSITES", "Sentinel2Composite", "as_paths",
    "open_products", "open_sentinel2", "BandRef", "Sentinel2Source", "read_mtd", "STAC_COLLECTION",
    "stac_item_source", "DateRange", "parse_datetime",
]
