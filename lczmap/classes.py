"""The 17 Local Climate Zone classes as data: codes, letters, names, WUDAPT colours and Stewart & Oke property ranges."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np

NODATA = 0
N_CLASSES = 17
CODES: tuple[int, ...] = tuple(range(1, N_CLASSES + 1))
BUILT_CODES: tuple[int, ...] = tuple(range(1, 11))
NATURAL_CODES: tuple[int, ...] = tuple(range(11, 18))


@dataclass(frozen=True)
class Range:
    """A closed property range; None marks an open bound (Stewart & Oke's '>' and '<')."""

    min: float | None
    max: float | None


@dataclass(frozen=True)
class LczClass:
    code: int
    lcz: str
    name: str
    colour: str
    svf: Range
    aspect_ratio: Range
    building_fraction: Range
    impervious_fraction: Range
    pervious_fraction: Range
    roughness_height: Range
    terrain_roughness_class: Range
    built: bool

    @property
    def rgb(self) -> tuple[int, int, int]:
        h = self.colour.lstrip("#")
        return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)

    @property
    def label(self) -> str:
        return f"LCZ {self.lcz}"


def _value(text: str) -> float | None:
    return float(text) if text.strip() else None


@cache
def lcz_classes() -> tuple[LczClass, ...]:
    """All 17 classes in code order (1-10 built, 11-17 = A-G)."""
    text = resources.files("lczmap.data").joinpath("lcz_classes.csv").read_text()
    rows = csv.DictReader(line for line in io.StringIO(text) if not line.startswith("#"))
    out = []
    for r in rows:
        rng = lambda key: Range(_value(r[f"{key}_min"]), _value(r[f"{key}_max"]))  # noqa: E731
        out.append(
            LczClass(
                code=int(r["code"]), lcz=r["lcz"], name=r["name"], colour=r["colour"],
                svf=rng("svf"), aspect_ratio=rng("ar"), building_fraction=rng("bsf"),
                impervious_fraction=rng("isf"), pervious_fraction=rng("psf"),
                roughness_height=rng("hre"), terrain_roughness_class=rng("trc"),
                built=r["built"] == "1",
            )
        )
    return tuple(out)


def lcz_class(code: int) -> LczClass:
    """The class for a pixel code 1-17; GeoClimate's 101-107 are accepted for A-G."""
    code = normalise_code(code)
    if not 1 <= code <= N_CLASSES:
        raise ValueError(f"LCZ code {code} is not one of 1-17 (or 101-107)")
    return lcz_classes()[code - 1]


def normalise_code(code: int) -> int:
    """Map GeoClimate's 101-107 (A-G) to 11-17; other codes unchanged."""
    return code - 90 if 101 <= code <= 107 else code


def normalise_codes(codes: np.ndarray) -> np.ndarray:
    """Vectorised `normalise_code` for a map array."""
    codes = np.asarray(codes)
    return np.where((codes >= 101) & (codes <= 107), codes - 90, codes).astype(codes.dtype)


def colormap() -> dict[int, tuple[int, int, int, int]]:
    """The WUDAPT colour table as rasterio expects it (code -> RGBA), nodata transparent."""
    cmap = {NODATA: (0, 0, 0, 0)}
    cmap.update({c.code: (*c.rgb, 255) for c in lcz_classes()})
    return cmap


@cache
def oa_weights() -> np.ndarray:
    """The WUDAPT 17x17 weight matrix for OA_w (rows reference, columns predicted)."""
    text = resources.files("lczmap.data").joinpath("lcz_oa_weights.csv").read_text()
    rows = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return np.array([[float(v) for v in row.split(",")] for row in rows])
