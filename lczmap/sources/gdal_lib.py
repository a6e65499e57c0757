"""The GDAL C library rasterio runs on, opened through ctypes for the few calls rasterio does not wrap."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from pathlib import Path

import rasterio

from ..errors import LczmapError


@functools.cache
def gdal_library() -> ctypes.CDLL:
    """The GDAL library rasterio itself runs on, for the few C calls rasterio does not wrap (per-layer rasterising).

    Calls through ctypes release the GIL, so threads burn buildings in parallel.
    """
    import rasterio._base  # noqa: F401  (loads rasterio's libgdal into the process)

    path = _loaded_gdal()
    if path is None:
        raise LczmapError("GDAL: cannot locate the GDAL library rasterio uses (needed to rasterise buildings)")
    lib = ctypes.CDLL(path)
    p, i, d, s = ctypes.c_void_p, ctypes.c_int, ctypes.c_double, ctypes.c_char_p
    signatures = {
        "GDALAllRegister": (None, []),
        "GDALOpenEx": (p, [s, ctypes.c_uint, p, p, p]),
        "GDALDatasetGetLayerByName": (p, [p, s]),
        "OGR_L_SetSpatialFilterRect": (None, [p, d, d, d, d]),
        "GDALGetDriverByName": (p, [s]),
        "GDALCreate": (p, [p, s, i, i, i, i, p]),
        "GDALSetGeoTransform": (i, [p, ctypes.POINTER(d)]),
        "GDALRasterizeLayers": (i, [p, i, ctypes.POINTER(i), i, ctypes.POINTER(p), p, p, ctypes.POINTER(d), p, p, p]),
        "GDALGetRasterBand": (p, [p, i]),
        "GDALRasterIO": (i, [p, i, i, i, i, i, p, i, i, i, i, i]),
        "GDALClose": (i, [p]),
        "GDALGetCacheUsed64": (ctypes.c_int64, []),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    lib.GDALAllRegister()
    return lib


def _loaded_gdal() -> str | None:
    """Path of the libgdal this process has loaded (rasterio's wheel bundles its own), else the system's."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                if "libgdal" in line and "/" in line:
                    return line[line.index("/"):].strip()
    except OSError:  # no /proc (macOS): rasterio's bundled copy, or the system library
        pass
    folder = Path(rasterio.__file__).parent
    bundled = sorted([*folder.parent.glob("rasterio*libs/libgdal*"), *folder.glob(".dylibs/libgdal*")])
    return str(bundled[0]) if bundled else ctypes.util.find_library("gdal")
