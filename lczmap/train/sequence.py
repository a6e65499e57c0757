"""Keras batches from a PatchSource: shuffled per epoch, normalised, augmented and class-weighted, read by index from disk."""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np

from ..classes import N_CLASSES
from .augment import dihedral
from .datasets import PatchSource

GRAPH_INPUTS = ("x", "a", "mask")


def model_layout(model: keras.Model) -> tuple[str | None, tuple[str, ...]]:
    """(image input name or None, graph input names) of a model; a single image input is fed as a bare array."""
    if not isinstance(model.input, dict):
        return None, ()
    names = [t.name for t in model.inputs]
    image = next((t.name for t in model.inputs if len(t.shape) == 4), None)
    return image, tuple(n for n in names if n in GRAPH_INPUTS)


def needs_image(model: keras.Model) -> bool:
    return any(len(t.shape) == 4 for t in model.inputs)


class PatchSequence(keras.utils.PyDataset):
    """Batches of (inputs, targets (one-hot or soft)[, sample weights]) over `indices` of `source`.

    With `shuffle`, the order is a fresh permutation per epoch drawn from (seed, epoch), and augmentation
    draws from (seed, epoch, batch): the same run gives the same batches, also after a resume, whatever
    the loader threads do. Each batch is read from disk by its (sorted) index list, so memory holds only
    the batches in flight. Normalisation is (x - mean) / std per band; remaining NaN become 0 (the band mean).
    """

    def __init__(
        self,
        source: PatchSource,
        indices: np.ndarray,
        batch_size: int,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        band_index: Sequence[int] | None = None,
        layout: tuple[str | None, tuple[str, ...]] = (None, ()),
        image: bool = True,
        class_weights: np.ndarray | None = None,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        with_targets: bool = True,
        workers: int = 1,
    ):
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=2 * workers + 2)
        self.source = source
        self.indices = np.asarray(indices, np.int64)
        self.batch_size = int(batch_size)
        self.mean = None if mean is None else np.asarray(mean, np.float32)
        self.std = None if std is None else np.asarray(std, np.float32)
        self.band_index = None if band_index is None else np.asarray(band_index)
        self.image_key, self.graph_keys = layout
        self.image = image
        self.class_weights = class_weights
        self.shuffle, self.augment, self.seed = shuffle, augment, seed
        self.with_targets = with_targets
        self.epoch = 0
        self._order_epoch, self._order = -1, self.indices

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    @property
    def num_batches(self) -> int:
        return len(self)

    def order(self) -> np.ndarray:
        """The sample order of the current epoch."""
        if self.shuffle and self._order_epoch != self.epoch:
            self._order = np.random.default_rng([self.seed, self.epoch]).permutation(self.indices)
            self._order_epoch = self.epoch
        return self._order

    def batch_indices(self, i: int) -> np.ndarray:
        return self.order()[i * self.batch_size : (i + 1) * self.batch_size]

    def images(self, idx: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        x = self.source.read(idx)
        if self.band_index is not None:
            x = x[..., self.band_index]
        if self.mean is not None:
            x = (x - self.mean) / self.std
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32, copy=False)
        if rng is not None:
            x = dihedral(x, rng)
        return x

    def __getitem__(self, i: int):
        idx = self.batch_indices(i)
        rng = np.random.default_rng([self.seed, self.epoch, i]) if self.augment else None
        parts = {}
        if self.image:
            parts[self.image_key] = self.images(idx, rng)
        if self.graph_keys:
            graphs = self.source.read_graphs(idx)
            parts.update({k: graphs[k] for k in self.graph_keys})
        inputs = parts[None] if list(parts) == [None] else parts
        if not self.with_targets:
            return (inputs,)
        codes = self.source.labels[idx].astype(np.int64)
        y = self.source.target_rows(idx)
        if self.class_weights is None:
            return inputs, y
        return inputs, y, self.class_weights[codes - 1].astype(np.float32)


def balanced_class_weights(labels: np.ndarray) -> np.ndarray:
    """Weight per class (index code-1): n_samples / (n_present_classes * count_c); 0 for absent classes.

    These are sklearn's 'balanced' class weights. Applied per sample, every present class contributes
    the same total weight and the mean sample weight is 1 (MSMLA's release passed per-sample weights
    where class weights were expected, which weighted classes by an arbitrary sample's weight).
    """
    counts = np.bincount(np.asarray(labels, np.int64) - 1, minlength=N_CLASSES).astype(np.float64)
    present = counts > 0
    weights = np.zeros(N_CLASSES)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights
