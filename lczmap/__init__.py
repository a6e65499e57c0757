"""lczmap: Local Climate Zone maps of cities, from staged satellite inputs to a georeferenced GeoTIFF."""

__version__ = "0.1.0"
