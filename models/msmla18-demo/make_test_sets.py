"""Patch-level test sets from unseen demo cities: their reference polygons, and every cell of their truth maps.

usage: python make_test_sets.py CITY_DIR [CITY_DIR ...]   ->  unseen_ref.h5, unseen_all.h5 in the current folder
"""
import json
import sys
from pathlib import Path

import h5py
import numpy as np
import rasterio
import yaml
from rasterio.features import shapes
from rasterio.warp import transform_geom

from lczmap.train.city_patches import sample_city


def truth_config(city: Path) -> Path:
    """A copy of the city's city.yaml whose reference polygons are its whole truth map."""
    with rasterio.open(city / "truth_lcz.tif") as src:
        truth, transform, crs = src.read(1), src.transform, src.crs
    features = [{"type": "Feature", "properties": {"lcz": int(v)}, "geometry": transform_geom(crs, "EPSG:4326", g)}
                for g, v in shapes(truth, mask=truth > 0, transform=transform)]
    (city / "truth_reference.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    cfg = yaml.safe_load((city / "city.yaml").read_text())
    cfg["reference"] = "truth_reference.geojson"
    (city / "city_truth.yaml").write_text(yaml.safe_dump(cfg))
    return city / "city_truth.yaml"


def concatenate(parts: list[Path], out: Path) -> None:
    with h5py.File(out, "w") as dst:
        for key in ("sen2", "label"):
            dst[key] = np.concatenate([h5py.File(p, "r")[key][:] for p in parts])
        dst["sen2"].attrs["bands"] = h5py.File(parts[0], "r")["sen2"].attrs["bands"]


cities = [Path(c) for c in sys.argv[1:]]
concatenate([sample_city(c / "city.yaml", f"{c.name}_ref.h5", progress=False) for c in cities], Path("unseen_ref.h5"))
concatenate([sample_city(truth_config(c), f"{c.name}_all.h5", progress=False) for c in cities], Path("unseen_all.h5"))
