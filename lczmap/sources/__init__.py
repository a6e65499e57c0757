"""Input sources, one module each, behind one interface (base.Source): checked once, then read per chunk onto the base grid."""

from .base import Source
from .dsm import DsmSource, open_dsm
from .landcover import LANDCOVER_CLASSES, WORLDCOVER, LandcoverSource, open_landcover
from .osm import OsmSource, open_osm
from .sentinel2 import S2_BANDS, SCL_MASKED, Sentinel2Composite, Sentinel2Source, open_products, open_sentinel2
from .vhr import VhrSource, open_vhr, read_vhr_window

__all__ = [
    "Source", "DsmSource", "open_dsm", "LANDCOVER_CLASSES", "WORLDCOVER", "LandcoverSource", "open_landcover",
    "OsmSource", "open_osm", "S2_BANDS", "SCL_MASKED", "Sentinel2Composite", "Sentinel2Source", "open_products",
    "open_sentinel2",
    "VhrSource", "open_vhr", "read_vhr_window",
]
