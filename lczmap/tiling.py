"""Cut one model patch per output cell from a staged block as strided views, and normalise them with the model card."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .card import ModelCard
from .errors import LczmapError

DEFAULT_NODATA_THRESHOLD = 0.2


def band_indices(wanted: Sequence[str], available: Sequence[str]) -> list[int]:
    """Positions of the card's bands in the staged stack's band order."""
    missing = [b for b in wanted if b not in available]
    if missing:
        raise LczmapError(f"model bands {missing} are not staged bands (known: {', '.join(available)})")
    return [list(available).index(b) for b in wanted]


def patch_views(image: np.ndarray, patch: int, step: int) -> np.ndarray:
    """Channel-last (h, w, bands) block -> (rows, cols, patch, patch, bands) view, one window per output cell.

    The block must be the base window of those cells (CityGrid.window): cell (i, j)'s window starts at
    pixel (i*step, j*step) of the block. No pixel is copied.
    """
    h, w, _ = image.shape
    if h < patch or w < patch or (h - patch) % step or (w - patch) % step:
        raise ValueError(f"block {h}x{w} is not a window of whole patches ({patch} px, step {step})")
    windows = sliding_window_view(image, (patch, patch), axis=(0, 1))[::step, ::step]
    return windows.transpose(0, 1, 3, 4, 2)


def nodata_share(block: np.ndarray, patch: int, step: int) -> np.ndarray:
    """Share (0-1) of each cell's patch window where any band is NaN, (rows, cols); `block` is (bands, h, w)."""
    missing = np.isnan(block).any(axis=0)
    windows = sliding_window_view(missing, (patch, patch))[::step, ::step]
    return windows.mean(axis=(-2, -1), dtype=np.float32)


class BlockPatches:
    """The accepted patches of one block: its normalised image, the accepted cells, and their windows as views.

    The block is normalised once, before cutting: neighbouring windows overlap about (patch/step)^2 times,
    so this is that many times less work than normalising every patch, with identical values. `pad_to`:
    zero-pad the image to pad_to x pad_to pixels (a full block's window), so every block has one shape.
    """

    def __init__(self, block: np.ndarray, card: ModelCard, step: int, nodata_threshold: float = DEFAULT_NODATA_THRESHOLD,
                 mask: np.ndarray | None = None, pad_to: int | None = None):
        patch = card.patch_size
        # A cell is mapped when at most `nodata_threshold` of its window is missing (and it is in `mask`).
        self.valid = nodata_share(block, patch, step) <= nodata_threshold
        if mask is not None:
            self.valid &= mask
        self.cells = np.argwhere(self.valid)
        _, h, w = block.shape
        self.image = np.zeros((max(h, pad_to or 0), max(w, pad_to or 0), block.shape[0]), np.float32)
        self.image[:h, :w] = card.normalise(block.transpose(1, 2, 0)[None])[0]
        # Remaining NaNs (below the threshold) become the band mean, i.e. 0 after normalisation.
        np.nan_to_num(self.image, copy=False, nan=0.0)
        self.views = patch_views(self.image, patch, step)

    def __len__(self) -> int:
        return len(self.cells)

    def batch(self, start: int, stop: int) -> np.ndarray:
        """Normalised patches start..stop of the accepted cells, (n, p, p, bands) float32, NaN-free."""
        return self.take(self.cells[start:stop])

    def take(self, cells: np.ndarray) -> np.ndarray:
        """Normalised patches of block cells (n, 2), copied out of the views."""
        return self.views[cells[:, 0], cells[:, 1]]
