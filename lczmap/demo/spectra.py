"""Surface materials of the demo scene: Sentinel-2 reflectance spectra, image colours and WorldCover classes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Band order of the staged stack (and of every spectrum below).
S2_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")

# A scene pixel's code packs the material (low 5 bits) with two flags, so one uint8 array holds the scene.
VARIANT_BIT = 32  # a brighter or darker version of the material (one roof, one patch of lawn)
SHADOW_BIT = 64  # cast shadow of a building or tree
N_CODES = 128
MATERIAL_MASK = 31


@dataclass(frozen=True)
class Material:
    code: int
    name: str
    reflectance: tuple[float, ...]  # surface reflectance in S2_BANDS order
    rgb: tuple[int, int, int]  # colour in the very-high-resolution image
    worldcover: int  # ESA WorldCover v200 class of a pixel made of this material
    roof: bool = False


# Reflectances follow typical library spectra (USGS/ECOSTRESS-like shapes): vegetation has a red edge and high
# NIR, water is dark beyond the green, mineral surfaces rise slowly towards the SWIR.
MATERIALS: tuple[Material, ...] = (
    Material(1, "water", (0.055, 0.050, 0.032, 0.026, 0.020, 0.018, 0.016, 0.014, 0.008, 0.006), (38, 62, 78), 80),
    Material(2, "asphalt", (0.080, 0.088, 0.097, 0.105, 0.111, 0.116, 0.121, 0.126, 0.145, 0.135), (92, 92, 96), 50),
    Material(3, "asphalt_new", (0.050, 0.054, 0.058, 0.063, 0.067, 0.070, 0.073, 0.076, 0.088, 0.083), (58, 58, 62), 50),
    Material(4, "concrete", (0.175, 0.205, 0.225, 0.240, 0.252, 0.262, 0.272, 0.282, 0.315, 0.290), (178, 174, 166), 50),
    Material(5, "roof_concrete", (0.155, 0.175, 0.190, 0.200, 0.210, 0.220, 0.230, 0.238, 0.272, 0.255), (160, 158, 152), 50, True),
    Material(6, "roof_tile_red", (0.065, 0.080, 0.160, 0.215, 0.255, 0.278, 0.295, 0.305, 0.375, 0.330), (160, 78, 58), 50, True),
    Material(7, "roof_dark", (0.058, 0.062, 0.068, 0.073, 0.078, 0.083, 0.088, 0.093, 0.108, 0.098), (66, 64, 66), 50, True),
    Material(8, "roof_metal", (0.275, 0.290, 0.300, 0.305, 0.310, 0.314, 0.320, 0.324, 0.300, 0.262), (196, 200, 204), 50, True),
    Material(9, "roof_blue", (0.140, 0.115, 0.080, 0.082, 0.090, 0.098, 0.108, 0.110, 0.100, 0.082), (62, 96, 150), 50, True),
    Material(10, "roof_green_paint", (0.075, 0.118, 0.090, 0.098, 0.108, 0.118, 0.128, 0.132, 0.120, 0.098), (84, 138, 104), 50, True),
    Material(11, "roof_white", (0.440, 0.460, 0.470, 0.472, 0.474, 0.476, 0.478, 0.478, 0.440, 0.390), (232, 232, 228), 50, True),
    Material(12, "roof_rust", (0.070, 0.085, 0.125, 0.165, 0.190, 0.205, 0.218, 0.226, 0.260, 0.230), (140, 100, 74), 50, True),
    Material(13, "grass", (0.040, 0.080, 0.050, 0.120, 0.275, 0.345, 0.380, 0.400, 0.225, 0.110), (104, 150, 72), 30),
    Material(14, "tree_broadleaf", (0.030, 0.058, 0.034, 0.092, 0.255, 0.330, 0.362, 0.380, 0.172, 0.080), (52, 96, 44), 10),
    Material(15, "tree_conifer", (0.022, 0.040, 0.025, 0.062, 0.160, 0.210, 0.232, 0.242, 0.112, 0.050), (34, 70, 38), 10),
    Material(16, "shrub", (0.042, 0.066, 0.060, 0.102, 0.182, 0.220, 0.240, 0.252, 0.222, 0.132), (110, 120, 70), 20),
    Material(17, "crop", (0.034, 0.075, 0.040, 0.112, 0.300, 0.400, 0.440, 0.460, 0.240, 0.118), (128, 176, 80), 40),
    Material(18, "soil", (0.080, 0.110, 0.140, 0.168, 0.190, 0.208, 0.220, 0.230, 0.300, 0.262), (150, 124, 96), 60),
    Material(19, "sand", (0.150, 0.190, 0.230, 0.258, 0.278, 0.290, 0.300, 0.310, 0.362, 0.302), (214, 200, 160), 60),
    Material(20, "rock", (0.120, 0.138, 0.158, 0.170, 0.180, 0.190, 0.200, 0.208, 0.258, 0.222), (140, 138, 132), 60),
    Material(21, "dry_grass", (0.060, 0.085, 0.095, 0.140, 0.215, 0.245, 0.262, 0.275, 0.300, 0.200), (170, 160, 100), 30),
)
BY_NAME: dict[str, Material] = {m.name: m for m in MATERIALS}
CODE: dict[str, int] = {m.name: m.code for m in MATERIALS}
ROOF_CODES: tuple[int, ...] = tuple(m.code for m in MATERIALS if m.roof)

# The variant of a material is this much brighter (a newer roof, a sunlit lawn).
VARIANT_GAIN = 1.12
# Shadowed surfaces get diffuse skylight only: strongest loss in the NIR/SWIR, bluish tint.
SHADOW_GAIN = np.array([0.42, 0.38, 0.34, 0.32, 0.30, 0.29, 0.28, 0.28, 0.26, 0.25])

CLOUD_REFLECTANCE = np.array([0.52, 0.52, 0.53, 0.54, 0.55, 0.55, 0.56, 0.56, 0.42, 0.30])


def _code_table(values: np.ndarray, shadow_gain: np.ndarray) -> np.ndarray:
    """Expand per-material rows (index = material code) to all N_CODES codes (variant and shadow flags)."""
    n_bands = values.shape[1]
    table = np.zeros((N_CODES, n_bands), dtype=np.float64)
    for code in range(N_CODES):
        mat = code & MATERIAL_MASK
        row = values[mat].copy()
        if code & VARIANT_BIT:
            row = row * VARIANT_GAIN
        if code & SHADOW_BIT:
            row = row * shadow_gain
        table[code] = row
    return table


# Leaf-off (winter) spectra of the seasonal materials, as mixtures of other materials: deciduous canopies show
# branches over litter and dry grass, lawns and fields turn brown or bare, shrubs half so. Conifers keep their needles.
LEAF_OFF: dict[str, dict[str, float]] = {
    "grass": {"dry_grass": 1.0},
    "tree_broadleaf": {"dry_grass": 0.45, "rock": 0.25, "tree_conifer": 0.30},
    "crop": {"soil": 0.8, "dry_grass": 0.2},
    "shrub": {"shrub": 0.5, "dry_grass": 0.5},
}


def reflectance_table(leaf_off: float = 0.0) -> np.ndarray:
    """(N_CODES, 10) surface reflectance of every scene code, in S2_BANDS order.

    `leaf_off` (0-1) moves the seasonal materials towards their LEAF_OFF spectra (0: the leaf-on spectra).
    """
    base = np.zeros((MATERIAL_MASK + 1, len(S2_BANDS)))
    for m in MATERIALS:
        base[m.code] = m.reflectance
    if leaf_off > 0:
        for name, mix in LEAF_OFF.items():
            winter = sum(share * np.asarray(BY_NAME[other].reflectance) for other, share in mix.items())
            base[CODE[name]] += leaf_off * (winter - base[CODE[name]])
    return _code_table(base, SHADOW_GAIN)


def rgb_table() -> np.ndarray:
    """(N_CODES, 3) display colour (0-255 floats) of every scene code."""
    base = np.zeros((MATERIAL_MASK + 1, 3))
    for m in MATERIALS:
        base[m.code] = m.rgb
    return _code_table(base, np.array([0.40, 0.42, 0.50]))


def worldcover_table() -> np.ndarray:
    """(N_CODES,) WorldCover class of every scene code (0 for an unset pixel)."""
    table = np.zeros(N_CODES, dtype=np.uint8)
    for code in range(N_CODES):
        mat = code & MATERIAL_MASK
        for m in MATERIALS:
            if m.code == mat:
                table[code] = m.worldcover
    return table
