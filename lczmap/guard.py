"""Compare a few sampled blocks of a plan's staged inputs with the model card's training statistics, and name the
bands that lie far outside them with their likely cause.

Cheap by design: about SAMPLE_BLOCKS small windows spread over the AOI (a region: over a few of its tiles) are
read, before any mapping. A card with training statistics (mean/std per band) is checked in standard deviations; a
card that feeds inputs unchanged (mean 0, std 1, the So2Sat LCZ42 convention) is checked against a plausible
physical range.
"""

from __future__ import annotations

import math

import numpy as np

from .plan import PredictPlan
from .stage import S2_BANDS

SAMPLE_BLOCKS = 4
SAMPLE_CELLS = 16  # output cells a side of each sampled window
MIN_SAMPLES = 100  # finite pixels of a band below which it is not judged
FAR_STD = 6.0  # a band whose median is this many training standard deviations off is "far outside"
MAX_REFLECTANCE = 1.5  # reflectance medians above this are digital numbers, not reflectance
MAX_NEGATIVE_SHARE = 0.05  # a larger share of negative reflectance means an offset removed that was never there
# Every sampled window holds some dark surface (vegetation, water, shade) whose visible reflectance is a few percent
# (the darkest 1 % of a demo city or of a BigEarthNet patch: 0.01-0.05): when that floor is above this in all the
# visible bands, every pixel was lifted, as by baseline 04.00's +1000 DN offset read as DN / 10000 (floor >= 0.1)
DARK_BANDS = ("B02", "B03", "B04")
DARK_PERCENTILE = 1.0
MAX_DARK_REFLECTANCE = 0.08
# Every sampled window holds some open ground, whose height above ground is about 0: a band whose 5th percentile
# is above this is elevation above sea level (missed only where the terrain itself lies below it)
MIN_GROUND_M = 10.0
REFLECTANCE_CAUSE = "looks like unharmonised L2A (baseline >= 04.00 offset) or reflectance x10000"
HEIGHT_CAUSE = ("looks like absolute elevation: pass --dtm, or let lczmap derive height above ground "
                "(leave out --dsm-height given)")
HEIGHT_BANDS = ("dsm",)


def sample_bands(plan: PredictPlan, blocks: int = SAMPLE_BLOCKS) -> np.ndarray:
    """(bands, n) float32 finite-or-NaN pixels of the card's bands from `blocks` (at most 4) windows spread over the
    grid: its four corners, or its centre for one."""
    grid, patch = plan.grid, plan.card.patch_size
    h, w = grid.output.shape
    size = min(SAMPLE_CELLS, h, w)
    if blocks == 1:
        corners = [((h - size) // 2, (w - size) // 2)]
    else:
        corners = sorted({(int(r), int(c)) for r in np.linspace(0, h - size, 2) for c in np.linspace(0, w - size, 2)})
    samples = []
    for r, c in corners[:blocks]:
        rows, cols = slice(r, r + size), slice(c, c + size)
        block = plan.read_window(*grid.window(rows, cols, patch))
        samples.append(block.reshape(block.shape[0], -1))
    return np.concatenate(samples, axis=1)


def check_inputs(*plans: PredictPlan) -> tuple[str, ...]:
    """One warning line per band of the plans' inputs far outside the model's training statistics (empty if none).

    Several plans (a region's tiles, one model) are judged together, SAMPLE_BLOCKS windows shared among them."""
    blocks = math.ceil(SAMPLE_BLOCKS / len(plans))
    values = np.concatenate([sample_bands(plan, blocks) for plan in plans], axis=1)
    card = plans[0].card
    unchanged = all(m == 0 for m in card.mean) and all(s == 1 for s in card.std)
    judged = {band: data[np.isfinite(data)] for band, data in zip(card.bands, values, strict=True)}
    judged = {band: data for band, data in judged.items() if data.size >= MIN_SAMPLES}
    floors = [float(np.percentile(judged[band], DARK_PERCENTILE)) for band in DARK_BANDS if band in judged]
    lifted = bool(floors) and min(floors) > MAX_DARK_REFLECTANCE
    warnings = []
    for band, mean, std in zip(card.bands, card.mean, card.std, strict=True):
        if band not in judged:
            continue
        data = judged[band]
        median = float(np.median(data))
        if band in S2_BANDS:
            negative = float(np.mean(data < 0))
            floor = float(np.percentile(data, DARK_PERCENTILE))
            if (median > MAX_REFLECTANCE or negative > MAX_NEGATIVE_SHARE or (lifted and band in DARK_BANDS)
                    or (not unchanged and abs(median - mean) > FAR_STD * std)):
                warnings.append(f"band {band}: median reflectance {median:.3g}, darkest {DARK_PERCENTILE:g}% at "
                                f"{floor:.3g}, {100 * negative:.0f}% negative (model {card.name} was trained on "
                                f"{_training(mean, std, unchanged, '0-1')}): {REFLECTANCE_CAUSE}")
        elif band in HEIGHT_BANDS:
            ground = float(np.percentile(data, 5))
            if ground > MIN_GROUND_M or (not unchanged and median - mean > FAR_STD * std):
                warnings.append(f"band {band}: median height {median:.1f} m, ground at {ground:.1f} m "
                                f"(model {card.name} was trained on "
                                f"{_training(mean, std, unchanged, 'heights above ground')}): {HEIGHT_CAUSE}")
        elif not unchanged and abs(median - mean) > FAR_STD * std:
            warnings.append(f"band {band}: median {median:.3g}, far outside model {card.name}'s training "
                            f"({_training(mean, std, unchanged, '')}): check this input")
    return tuple(warnings)


def _training(mean: float, std: float, unchanged: bool, plausible: str) -> str:
    return plausible if unchanged else f"{mean:.3g} +- {std:.3g}"
