"""Patch cutting: strided views equal windows cut by hand, the nodata threshold, normalisation with the card."""

import numpy as np
import pytest
from odc.geo.geom import box

from lczmap.card import ModelCard
from lczmap.errors import LczmapError
from lczmap.grid import city_grid
from lczmap.tiling import BlockPatches, band_indices, nodata_share, patch_views

BANDS = ("B02", "B03", "B04", "osm_buildings", "dsm")


def card(patch=48, bands=BANDS):
    n = len(bands)
    return ModelCard(name="t", network="msmla18", input_shape=(patch, patch, n), bands=bands,
                     mean=tuple(float(i) for i in range(n)), std=tuple(float(i + 1) for i in range(n)))


@pytest.mark.parametrize("patch", [48, 32])
def test_views_equal_windows_cut_by_hand(patch):
    # 2.4 x 1.9 km in UTM 52N: 24 x 19 output cells.
    g = city_grid(box(500_000, 4_150_000, 502_400, 4_151_900, "EPSG:32652"), patch=patch)
    rng = np.random.default_rng(0)
    stack = rng.random((len(BANDS), *g.base.shape), dtype=np.float32)
    rows, cols = slice(3, 11), slice(5, 19)
    r, c = g.window(rows, cols, patch)
    views = patch_views(stack[:, r, c].transpose(1, 2, 0), patch, g.factor)
    assert views.shape == (8, 14, patch, patch, len(BANDS))
    assert not views.flags.owndata  # a view: nothing copied
    start = g.patch_start(patch)
    for i, j in [(3, 5), (10, 18), (7, 11)]:
        y0, x0 = start + i * g.factor, start + j * g.factor
        by_hand = stack[:, y0:y0 + patch, x0:x0 + patch].transpose(1, 2, 0)
        assert np.array_equal(views[i - rows.start, j - cols.start], by_hand)
        # The window is centred on the cell: the cell's own 10 x 10 base pixels sit in its middle.
        assert y0 + patch // 2 == g.halo + i * g.factor + g.factor // 2


def test_nodata_threshold_and_nan_fill():
    c = card()
    rng = np.random.default_rng(1)
    block = rng.random((len(BANDS), 48 + 10 * 3, 48 + 10 * 3), dtype=np.float32)  # 4 x 4 cells
    block[4, :, :10] = np.nan  # dsm missing on the first 10 columns: 10/48 of cell column 0's window
    block[0, 60:, 60:] = np.nan  # one band missing in a corner: 18x18 px of cell (3, 3)'s window
    share = nodata_share(block, 48, 10)
    assert share[0, 0] == pytest.approx(10 / 48) and share[0, 1] == 0
    assert share[3, 3] == pytest.approx(18 * 18 / 48**2)
    strict = BlockPatches(block, c, 10, nodata_threshold=0.2)
    assert not strict.valid[:, 0].any() and strict.valid[:, 1:].all()
    loose = BlockPatches(block, c, 10, nodata_threshold=0.25, mask=np.eye(4, dtype=bool))
    assert loose.valid.sum() == 4  # only the mask's cells
    x = loose.batch(0, len(loose))
    assert x.shape == (4, 48, 48, len(BANDS)) and x.dtype == np.float32 and not np.isnan(x).any()
    # Normalised with the card's statistics; missing pixels become 0, the band mean.
    raw = block[:, :48, :48].transpose(1, 2, 0)
    expected = (raw - np.array(c.mean, np.float32)) / np.array(c.std, np.float32)
    assert np.allclose(x[0], np.nan_to_num(expected, nan=0.0))
    assert (x[0][:, :10, 4] == 0).all()


def test_band_selection_follows_the_card():
    stack_bands = ("B02", "B03", "B04", "B05", "osm_buildings", "dsm", "landcover")
    assert band_indices(("dsm", "B02", "landcover"), stack_bands) == [5, 0, 6]
    with pytest.raises(LczmapError, match="ndvi"):
        band_indices(("B02", "ndvi"), stack_bands)


def test_block_must_hold_whole_patches():
    with pytest.raises(ValueError):
        patch_views(np.zeros((50, 48, 3), np.float32), 48, 10)
