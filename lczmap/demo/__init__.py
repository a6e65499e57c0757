"""Generate a synthetic demo city: every input lczmap reads (AOI, Sentinel-2 SAFE, DSM/DTM, WorldCover, OSM, VHR,
training areas) plus the LCZ truth, all derived from one 2 m surface scene."""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import yaml

from ..aoi import read_aoi
from ..config import load_city_config
from ..errors import LczmapError
from ..grid import city_grid
from .dem import write_dems
from .layout import Layout, aoi_polygon, choose_place, make_layout, write_aoi, write_truth
from .osm_xml import write_osm, write_pbf
from .reference import write_reference
from .scene import build_scene, cast_shadows
from .sentinel2_safe import OVERPASS_UTC_HOURS, Acquisition, sun_position, write_sentinel2
from .vhr import write_vhr
from .worldcover import write_worldcover

log = logging.getLogger(__name__)

MIN_SIZE_KM, MAX_SIZE_KM = 1.0, 40.0
MAX_SCENES = 12
# Cloud cover of the second, third, ... product: one moderately cloudy winter scene, one mostly cloudy scene,
# then a random mix (the first product keeps Realism.cloud_cover).
SCENE_CLOUD_COVER = ((0.10, 0.25), (0.50, 0.60))
OTHER_CLOUD_COVER = (0.03, 0.35)


@dataclass(frozen=True)
class Realism:
    """Knobs that make the demo city harder (or easier) to map. With the defaults, a linear discriminant on per-cell
    band means, heights and OSM building fractions reaches OA ~0.88 on a seed it was not fitted on."""

    boundary_mix: float = 0.5  # chance that a cell on a class boundary holds a 15-45 % strip of the neighbour class
    param_spread: float = 0.2  # surface fractions drawn from the class ranges widened by this share of their width
    s2_noise: float = 0.006  # Sentinel-2 reflectance noise (absolute, 1 sigma)
    s2_relative_noise: float = 0.03  # plus this share of the reflectance
    s2_psf_sigma: float = 0.5  # Gaussian blur of the 10 m bands, in pixels (instrument point spread)
    illumination: tuple[float, float] = (0.92, 1.08)  # scene-wide gain range
    cloud_cover: tuple[float, float] = (0.015, 0.04)  # share of the image under cloud
    dsm_noise_m: float = 1.5  # DSM error (1 sigma, spatially correlated)
    osm_missing: float = 0.10  # share of buildings left out of the OSM extract (patchy)
    osm_jitter_m: float = 0.7  # digitising offset of OSM footprints (1 sigma)


DEFAULT_REALISM = Realism()
FILES = {
    "aoi": "aoi.geojson",
    "truth": "truth_lcz.tif",
    "dsm": "dsm.tif",
    "dtm": "dtm.tif",
    "landcover": "worldcover.tif",
    "osm": "buildings.osm",
    "vhr": "vhr_rgb.tif",
    "reference": "reference.geojson",
}
PBF_NAME = "buildings.osm.pbf"
CITY_YAML = "city.yaml"


def generate(folder: Path, seed: int = 0, size_km: float = 8.0, realism: Realism = DEFAULT_REALISM, scenes: int = 1,
             **knobs) -> Path:
    """Write a demo city of about size_km x size_km into `folder`; return the path of its city.yaml.

    The same seed gives the same files; another seed gives another city and place. `knobs` override fields of
    `realism` (e.g. s2_noise=0.01). Files are built in a temporary folder beside `folder` and moved in at the end.
    `scenes` Sentinel-2 products of the same tile on different dates are written (see `acquisitions`); the first
    is the same whatever their number, so a seed's city stays the same.
    """
    if not 1 <= scenes <= MAX_SCENES:
        raise LczmapError(f"--scenes {scenes}: a demo city has 1-{MAX_SCENES} Sentinel-2 products")
    if not MIN_SIZE_KM <= size_km <= MAX_SIZE_KM:
        raise LczmapError(f"--size-km {size_km:g}: the demo city must be {MIN_SIZE_KM:g}-{MAX_SIZE_KM:g} km across")
    if seed < 0:
        raise LczmapError(f"--seed {seed}: the seed must be 0 or positive")
    unknown = set(knobs) - set(Realism.__dataclass_fields__)
    if unknown:
        raise LczmapError(f"unknown realism knobs {sorted(unknown)}; known: {sorted(Realism.__dataclass_fields__)}")
    realism = replace(realism, **knobs)
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.demo-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    # Independent random streams per part, so tuning one knob does not reshuffle the rest.
    parts = ("place", "layout", "scene", "s2", "dem", "osm", "vhr", "reference", "scenes")  # append new parts only
    seeds = np.random.SeedSequence(seed).spawn(len(parts))
    streams = {part: np.random.default_rng(s) for part, s in zip(parts, seeds, strict=True)}
    timer = _Timer()
    try:
        place, date = choose_place(streams["place"])
        name = f"demo-{place.name}-{seed}"
        write_aoi(tmp / FILES["aoi"], aoi_polygon(place, size_km, streams["place"]), name)
        grid = city_grid(read_aoi(tmp / FILES["aoi"]))
        layout = make_layout(grid, place, date, size_km, streams["layout"])
        write_truth(tmp / FILES["truth"], layout)
        timer.lap("layout")
        scene = build_scene(layout, streams["scene"], realism.boundary_mix, realism.param_spread)
        azimuth, elevation = sun_position(place, date, OVERPASS_UTC_HOURS)
        cast_shadows(scene, azimuth, elevation)
        timer.lap("scene")
        safe, products = write_sentinel2(
            tmp, scene, streams["s2"], noise=realism.s2_noise, relative_noise=realism.s2_relative_noise,
            psf_sigma=realism.s2_psf_sigma, illumination=realism.illumination, cloud_cover=realism.cloud_cover,
        )
        safes = [safe]
        scene_seeds = seeds[parts.index("scenes")].spawn(scenes - 1)
        for k, sseq in enumerate(scene_seeds, start=1):
            rng = np.random.default_rng(sseq)
            acquisition, cover = acquisitions(layout, k, scenes, rng)
            more, _ = write_sentinel2(
                tmp, scene, rng, noise=realism.s2_noise, relative_noise=realism.s2_relative_noise,
                psf_sigma=realism.s2_psf_sigma, illumination=realism.illumination, cloud_cover=cover,
                grid=products.grid, acquisition=acquisition,
            )
            safes.append(more)
        timer.lap("sentinel-2")
        write_dems(tmp / FILES["dsm"], tmp / FILES["dtm"], layout, products, streams["dem"], realism.dsm_noise_m)
        write_worldcover(tmp / FILES["landcover"], products)
        timer.lap("dem+worldcover")
        write_osm(tmp / FILES["osm"], scene, products.grid, streams["osm"], realism.osm_missing, realism.osm_jitter_m)
        has_pbf = write_pbf(tmp / FILES["osm"], tmp / PBF_NAME)
        timer.lap("osm")
        write_vhr(tmp / FILES["vhr"], scene, streams["vhr"])
        timer.lap("vhr")
        write_reference(tmp / FILES["reference"], layout, streams["reference"])
        config = {
            "name": name, "aoi": FILES["aoi"], "sentinel2": safe.name if scenes == 1 else [s.name for s in safes],
            "dsm": FILES["dsm"], "dtm": FILES["dtm"],
            "landcover": FILES["landcover"], "landcover_scheme": "worldcover", "osm": FILES["osm"], "vhr": FILES["vhr"],
            "reference": FILES["reference"], "reference_column": "lcz", "truth": FILES["truth"],
        }
        (tmp / CITY_YAML).write_text(yaml.safe_dump(config, sort_keys=False))
        load_city_config(tmp / CITY_YAML)  # the contract: what we wrote must load
        _move_into(tmp, folder, [*FILES.values(), *(s.name for s in safes), CITY_YAML, *([PBF_NAME] if has_pbf else [])])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("demo city %s (%g km, seed %d) written to %s in %s", name, size_km, seed, folder, timer)
    return folder / CITY_YAML


def _move_into(tmp: Path, folder: Path, names: list[str]) -> None:
    """Move finished files into `folder`, replacing earlier ones; stale demo SAFE products are removed."""
    folder.mkdir(parents=True, exist_ok=True)
    new_safes = {n for n in names if n.endswith(".SAFE")}
    for old in folder.glob("S2B_MSIL2A_*_N0510_R060_*.SAFE"):
        if old.name not in new_safes:
            shutil.rmtree(old)
    for name in names:
        target = folder / name
        if (tmp / name).is_dir() and target.exists():
            trash = folder / f".{name}.old-{os.getpid()}"
            os.replace(target, trash)
            os.replace(tmp / name, target)
            shutil.rmtree(trash)
        else:
            os.replace(tmp / name, target)
    if PBF_NAME not in names:
        (folder / PBF_NAME).unlink(missing_ok=True)


def leaf_off_share(day: dt.date, lat: float) -> float:
    """How leafless deciduous vegetation is on `day` (0 in summer, 1 in mid-winter) at latitude `lat`."""
    peak = 15 if lat >= 0 else 196  # mid-January north, mid-July south
    return float(min(1.0, max(0.0, 1.4 * math.cos(2 * math.pi * (day.timetuple().tm_yday - peak) / 365))))


def acquisitions(layout: Layout, k: int, scenes: int, rng: np.random.Generator) -> tuple[Acquisition, tuple[float, float]]:
    """The k-th extra product (k >= 1) of a city and its cloud cover range: k = 1 a winter (leaf-off) date, k = 2
    another date of the growing season, later ones any time of the year; the last one ends at a swath edge."""
    first = dt.date(int(layout.date[:4]), int(layout.date[4:6]), int(layout.date[6:]))
    north = layout.place.lat >= 0
    if k == 1:
        winter = dt.date(first.year, 1, 1) if north else dt.date(first.year, 6, 1)
        day = winter + dt.timedelta(days=5 * int(rng.integers(-5, 14)))
    elif k == 2:
        day = first + dt.timedelta(days=5 * int(rng.integers(4, 12)) * int(rng.choice([-1, 1])))
    else:
        day = first + dt.timedelta(days=5 * int(rng.integers(-36, 37)))
    leaf_off = max(0.0, leaf_off_share(day, layout.place.lat) - leaf_off_share(first, layout.place.lat))
    cover = SCENE_CLOUD_COVER[k - 1] if k <= len(SCENE_CLOUD_COVER) else OTHER_CLOUD_COVER
    edge = float(rng.uniform(0.45, 0.7)) if k == scenes - 1 else None
    return Acquisition(day=day.strftime("%Y%m%d"), leaf_off=round(leaf_off, 3), swath_edge=edge), cover


class _Timer:
    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: list[str] = []

    def lap(self, what: str) -> None:
        now = time.perf_counter()
        self.laps.append(f"{what} {now - self.last:.1f}s")
        log.debug("demo-data: %s done in %.1f s", what, now - self.last)
        self.last = now

    def __str__(self) -> str:
        return f"{time.perf_counter() - self.start:.1f} s ({', '.join(self.laps)})"
