"""Training-time augmentation: random flips and 90-degree rotations (the square's 8 symmetries) per patch."""

from __future__ import annotations

import numpy as np


def dihedral(patches: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, p, p, bands) -> each patch rotated by a random multiple of 90 degrees and mirrored with probability 1/2.

    Exact pixel moves (no interpolation, no fill), unlike the released Keras rotation by up to 90 degrees;
    an LCZ patch has no preferred orientation, so all 8 symmetries are equally valid samples.
    """
    turns = rng.integers(0, 4, len(patches))
    mirror = rng.random(len(patches)) < 0.5
    out = np.empty_like(patches)
    for i, (k, m) in enumerate(zip(turns, mirror, strict=True)):
        p = np.rot90(patches[i], k, axes=(0, 1))
        out[i] = p[:, ::-1] if m else p
    return out
