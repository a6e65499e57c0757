"""Compare a few sampled blocks of a plan's staged inputs with the model card's training statistics, and name the
bands that lie far outside them with their likely cause.

Cheap by design: at most SAMPLE_BLOCKS small windows spread over the AOI are read, before any mapping. A card
with training statistics (mean/std per band) is checked in standard deviations; a card that feeds inputs
unchanged (mean 0, std 1, the So2Sat LCZ42 convention) is checked against a plausible physical range.
"""

from __future__ import annotations

import numpy as np

from .plan import PredictPlan
from .stage import S2_BANDS

SAMPLE_BLOCKS = 4
SAMPLE_CELLS = 16  # output cells a side of each sampled window
MIN_SAMPLES = 100  # finite pixels of a band below which it is not judged
FAR_STD = 6.0  # a band whose median is this many training standard deviations off is "far outside"
MAX_REFLECTANCE = 1.5  # reflectance medians above this are digital numbers, not reflectance
MAX_NEGATIVE_SHARE = 0.05  # a larger share of negative reflectance means an offset removed that was never there
# Every sampled window holds some open ground, whose height above ground is about 0: a band whose 5th percentile
# is above this is elevation above sea level (missed only where the terrain itself lies below it)
MIN_GROUND_M = 10.0
REFLECTANCE_CAUSE = "looks like unharmonised L2A (baseline >= 04.00 offset) or reflectance x10000"
HEIGHT_CAUSE = ("looks like absolute elevation: pass --dtm, or let lczmap derive height above ground "
                "(leave out --dsm-height given)")
HEIGHT_BANDS = ("dsm",)


def sample_bands(plan: PredictPlan) -> np.ndarray:
    """(bands, n) float32 finite-or-NaN pixels of the card's bands from up to SAMPLE_BLOCKS windows spread over the grid."""
    grid, patch = plan.grid, plan.card.patch_size
    h, w = grid.output.shape
    size = min(SAMPLE_CELLS, h, w)
    corners = {(int(r), int(c)) for r in np.linspace(0, h - size, 2) for c in np.linspace(0, w - size, 2)}
    samples = []
    for r, c in sorted(corners)[:SAMPLE_BLOCKS]:
        rows, cols = slice(r, r + size), slice(c, c + size)
        block = plan.read_window(*grid.window(rows, cols, patch))
        samples.append(block.reshape(block.shape[0], -1))
    return np.concatenate(samples, axis=1)


def check_inputs(plan: PredictPlan) -> tuple[str, ...]:
    """One warning line per band of the plan's inputs far outside the model's training statistics (empty if none)."""
    values = sample_bands(plan)
    card = plan.card
    unchanged = all(m == 0 for m in card.mean) and all(s == 1 for s in card.std)
    warnings = []
    for band, mean, std, data in zip(card.bands, card.mean, card.std, values, strict=True):
        data = data[np.isfinite(data)]
        if data.size < MIN_SAMPLES:
            continue
        median = float(np.median(data))
        if band in S2_BANDS:
            negative = float(np.mean(data < 0))
            if median > MAX_REFLECTANCE or negative > MAX_NEGATIVE_SHARE or (not unchanged and abs(median - mean) > FAR_STD * std):
                warnings.append(f"band {band}: median reflectance {median:.3g}, {100 * negative:.0f}% negative "
                                f"(model {card.name} was trained on {_training(mean, std, unchanged, '0-1')}): "
                                f"{REFLECTANCE_CAUSE}")
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
