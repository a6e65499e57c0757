"""Predict one output block's class probabilities: read its window, cut patches, run the cached model in full batches."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from .card import ModelCard, load_model
from .classes import N_CLASSES
from .tiling import BlockPatches

if TYPE_CHECKING:
    from .predict import PredictPlan

log = logging.getLogger(__name__)

# Batches are padded to a multiple of this, so that compiled backends (JAX, XLA) see few distinct shapes.
PAD_MULTIPLE = 32

_models: dict[tuple[str, str], tuple[Any, threading.Lock]] = {}
_models_lock = threading.Lock()


def cached_model(card: ModelCard, s2_stream: bool = False) -> tuple[Any, threading.Lock]:
    """The card's Keras model, loaded once per process, and the lock that serialises calls to it.

    Keyed by weights file and checksum, so many cities (or blocks) mapped with one model in one worker
    share it. One model call at a time per process: the backend already spreads a batch over all cores,
    and the other threads meanwhile read and cut the next blocks. `s2_stream`: of a fused DF4LCZ model,
    only its Sentinel-2 stream (the nested df4lcz_s2 model).
    """
    key = (str(card.weights_path), card.weights_sha256, s2_stream)
    with _models_lock:
        if key not in _models:
            from .nets.df4lcz import S2_NAME

            log.debug("loading model %s in this process", card.name)
            model = load_model(card)
            _models[key] = (model.get_layer(S2_NAME) if s2_stream else model, threading.Lock())
        return _models[key]


def run_model(model: Any, lock: threading.Lock, inputs: dict[str, np.ndarray] | np.ndarray) -> np.ndarray:
    """(n, 17) probabilities of one batch; the batch is zero-padded to a multiple of PAD_MULTIPLE."""
    arrays = inputs if isinstance(inputs, dict) else {"": inputs}
    n = len(next(iter(arrays.values())))
    pad = -n % PAD_MULTIPLE
    if pad:
        arrays = {k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)]) for k, v in arrays.items()}
    with lock:
        out = model.predict_on_batch(arrays if isinstance(inputs, dict) else arrays[""])
    return np.asarray(out, dtype=np.float32)[:n]


def predict_block(plan: PredictPlan, rows: slice, cols: slice) -> np.ndarray:
    """(17, h, w) float32 class probabilities of output cells rows x cols; NaN where the cell is not mapped.

    Reads only the block's base window (with the patch halo), cuts one patch per cell inside the AOI as
    strided views, and predicts the accepted ones in batches of plan.batch_size.
    """
    card, grid = plan.card, plan.grid
    h, w = rows.stop - rows.start, cols.stop - cols.start
    out = np.full((N_CLASSES, h, w), np.nan, np.float32)
    in_aoi = plan.aoi_mask[rows, cols]
    if not in_aoi.any():
        return out
    base_rows, base_cols = grid.window(rows, cols, card.patch_size)
    block = plan.read_window(base_rows, base_cols)
    patches = BlockPatches(block, card, grid.factor, plan.nodata_threshold, mask=in_aoi)
    if not len(patches):
        return out
    model, lock = cached_model(card, s2_stream=card.network == "df4lcz" and not plan.use_vhr)
    probs = np.empty((len(patches), N_CLASSES), np.float32)
    for start in range(0, len(patches), plan.batch_size):
        stop = min(start + plan.batch_size, len(patches))
        inputs = patches.batch(start, stop)
        if plan.use_vhr:
            inputs = {"s2": inputs, **plan.graphs(patches.cells[start:stop], rows, cols).inputs()}
        probs[start:stop] = run_model(model, lock, inputs)
    out[:, patches.cells[:, 0], patches.cells[:, 1]] = probs.T
    return out
