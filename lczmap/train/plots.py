"""PNG figures of a training run and of an evaluation: loss/accuracy curves and a row-normalised confusion matrix."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..classes import lcz_classes


def _save(fig: Figure, path: Path) -> Path:
    """Write atomically: a half-written PNG never replaces a good one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    FigureCanvasAgg(fig)
    try:
        fig.savefig(tmp, dpi=120, format="png")
        os.replace(tmp, path)
    except BaseException:  # a full disk or a file-size limit: no partial file left behind
        tmp.unlink(missing_ok=True)
        raise
    return path


def training_curves(history: Mapping[str, Sequence[float]], path: Path, best_epoch: int | None = None) -> Path:
    """Loss and accuracy per epoch (training and validation), learning rate on a log axis; best epoch marked."""
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    axes = fig.subplots(1, 3)
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    for ax, key, title in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
        for prefix, label in (("", "training"), ("val_", "validation")):
            values = history.get(prefix + key)
            if values:
                ax.plot(epochs, values, marker="o", ms=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend()
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", ls="--", lw=1)
    rates = history.get("learning_rate")
    if rates:
        axes[2].semilogy(epochs, rates, marker="o", ms=3)
    axes[2].set_title("learning rate")
    axes[2].set_xlabel("epoch")
    return _save(fig, path)


def confusion_figure(cm: np.ndarray, path: Path, title: str = "") -> Path:
    """17x17 matrix coloured by row share (producer's view), with counts written in the non-empty cells."""
    cm = np.asarray(cm)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    labels = [c.lcz for c in lcz_classes()]
    fig = Figure(figsize=(8, 7), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of reference row")
    for (i, j), count in np.ndenumerate(cm):
        if count:
            ax.text(j, i, str(int(count)), ha="center", va="center", fontsize=7,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted LCZ")
    ax.set_ylabel("reference LCZ")
    ax.set_title(title)
    return _save(fig, path)
