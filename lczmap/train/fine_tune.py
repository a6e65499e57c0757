"""Where a trained model comes from: the model it starts from (checked, copied, its backbone frozen) and its labels' lineage."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras

from ..card import ModelCard, load_card, load_model
from ..classes import N_CLASSES
from ..errors import LczmapError, OptionError


def parent_card(init: str, network: str, input_shape: Sequence[int], bands: Sequence[str], options: dict[str, Any]) -> ModelCard:
    """The card of the model `--init` names, refused unless it is the same network on the same input (shape, bands, options)."""
    card = load_parent(init)
    want = {"network": network, "input shape": tuple(input_shape), "bands": tuple(bands), "network options": dict(options)}
    have = {"network": card.network, "input shape": tuple(card.input_shape), "bands": tuple(card.bands),
            "network options": dict(card.network_options)}
    differ = [k for k in want if want[k] != have[k]]
    if differ:
        what = "; ".join(f"{k} {_show(have[k])} (this run: {_show(want[k])})" for k in differ)
        raise OptionError(f"--init {init}: model {card.name} does not fit this run: {what}")
    return card


def load_parent(init: str) -> ModelCard:
    """The card of the model named by `--init` (a folder or a known model name)."""
    try:
        return load_card(init)
    except LczmapError as exc:  # load_card speaks of --model; here the option is --init
        raise OptionError(f"--init {init}: {str(exc).split(': ', 1)[-1]}") from None


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    return str(value)


def copy_weights(parent: ModelCard, model: keras.Model) -> None:
    """Set `model`'s weights to the parent's (its weights file checked against its card first)."""
    model.set_weights(load_model(parent).get_weights())


def freeze_backbone(model: keras.Model) -> list[str]:
    """Make only the class heads (the Dense layers with one unit per LCZ class) trainable; returns their names.

    Frozen batch-normalisation layers also keep their statistics (Keras runs them in inference mode).
    """
    heads = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense) and layer.units == N_CLASSES]
    for layer in model.layers:
        layer.trainable = any(layer is head for head in heads)
    return [layer.name for layer in heads]


def lineage(parent: ModelCard | None, label_sources: list[dict[str, Any]], trained: str) -> dict[str, Any]:
    """The card's `lineage`: the parent model (None when trained from scratch), where the labels came from, and when."""
    parent_info = None
    if parent is not None:
        parent_info = {"name": parent.name, "folder": str(parent.folder), "network": parent.network,
                       "weights_sha256": parent.weights_sha256, "trained": parent.lineage.get("trained", ""),
                       "lczmap_version": parent.lczmap_version}
    return {"parent": parent_info, "label_sources": label_sources, "trained": trained}


def trained_on(label_sources: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The card's `trained_on` (regions and label source, one line each) from the run's label sources."""
    regions, labels = [], []
    for source in label_sources:
        name = Path(source.get("path", "")).name
        if source.get("city"):
            regions.append(source["city"])
        what = {"raster": f"LCZ map {name} (band {source.get('description') or source.get('index')}, {source.get('coding')} codes)",
                "polygons": f"training areas {name}"}.get(source.get("kind"), f"patch dataset {name}")
        labels.append(f"{source['city']}: {what}" if source.get("city") else what)
    return {"regions": regions, "dates": "", "label_source": "; ".join(labels)}
