"""Model cards: what a trained model expects (bands, patch, normalisation) and how to load it by name or folder."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .atomic import write_json_atomic
from .errors import LczmapError

CARD_FILE = "card.json"
DEFAULT_MODEL = "msmla18-demo"


@dataclass(frozen=True)
class ModelCard:
    """The contents of a model folder's card.json.

    `bands` are names in the staged stack's band order (see lczmap.stage.BANDS); `mean`/`std` are per
    band in that order and patches are normalised as (x - mean) / std, NaN-free. The network outputs
    17 probabilities in class order 1..17.
    """

    name: str
    network: str
    input_shape: tuple[int, ...]
    bands: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights_file: str = "model.weights.h5"
    weights_sha256: str = ""
    network_options: dict[str, Any] = field(default_factory=dict)
    classes: tuple[int, ...] = tuple(range(1, 18))
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    notes: str = ""
    lczmap_version: str = __version__
    folder: Path | None = None

    @property
    def patch_size(self) -> int:
        return int(self.input_shape[0])

    @property
    def weights_path(self) -> Path:
        if self.folder is None:
            raise LczmapError(f"model card {self.name} has no folder")
        return self.folder / self.weights_file

    def normalise(self, patches: np.ndarray) -> np.ndarray:
        """(N, p, p, bands) raw values -> normalised float32, channel-last."""
        return ((patches - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("folder")
        d["patch_size"] = self.patch_size
        return d


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_card(card: ModelCard, folder: Path) -> Path:
    """Write card.json (with the weights checksum filled in) atomically; returns its path."""
    folder = Path(folder)
    weights = folder / card.weights_file
    doc = card.to_json()
    doc["weights_sha256"] = sha256(weights) if weights.exists() else ""
    return write_json_atomic(folder / CARD_FILE, doc)


def model_search_path() -> list[Path]:
    """Where named models are looked up: $LCZMAP_MODELS (os.pathsep-separated), then the repository's models/.

    Docker images copy models/ to a folder named in LCZMAP_MODELS; a source checkout finds it beside the package.
    """
    paths = [Path(p) for p in os.environ.get("LCZMAP_MODELS", "").split(os.pathsep) if p]
    paths.append(Path(__file__).resolve().parent.parent / "models")
    return [p for p in paths if p.is_dir()]


def available_models() -> list[ModelCard]:
    """Every model folder (one with card.json) on the search path."""
    seen, out = set(), []
    for root in model_search_path():
        for card_path in sorted(root.glob(f"*/{CARD_FILE}")):
            if card_path.parent.name not in seen:
                seen.add(card_path.parent.name)
                out.append(load_card(card_path.parent))
    return out


def load_card(name_or_dir: str | Path = DEFAULT_MODEL) -> ModelCard:
    """The card of a model folder, or of a named model on the search path."""
    candidate = Path(name_or_dir)
    if not (candidate / CARD_FILE).exists():
        found = [root / str(name_or_dir) for root in model_search_path() if (root / str(name_or_dir) / CARD_FILE).exists()]
        if not found:
            names = sorted({p.parent.name for root in model_search_path() for p in root.glob(f"*/{CARD_FILE}")})
            raise LczmapError(f"--model {name_or_dir}: no such model folder or name (known models: {', '.join(names) or 'none'})")
        candidate = found[0]
    try:
        doc = json.loads((candidate / CARD_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise LczmapError(f"{candidate / CARD_FILE}: not valid JSON ({exc})") from None
    doc.pop("patch_size", None)
    known = ModelCard.__dataclass_fields__
    for key in ("input_shape", "bands", "mean", "std", "classes"):
        if key in doc:
            doc[key] = tuple(doc[key])
    return ModelCard(**{k: v for k, v in doc.items() if k in known}, folder=candidate.resolve())


def verify_weights(card: ModelCard) -> None:
    """Refuse weights whose checksum differs from the card's (a half-copied or swapped file)."""
    if not card.weights_path.exists():
        raise LczmapError(f"{card.weights_path}: model weights file is missing")
    if card.weights_sha256 and sha256(card.weights_path) != card.weights_sha256:
        raise LczmapError(f"{card.weights_path}: weights checksum does not match card.json (corrupt or replaced file)")


def load_model(card: ModelCard):
    """Build the card's network and load its weights (Keras; any backend)."""
    from .nets import build

    verify_weights(card)
    model = build(card.network, tuple(card.input_shape), **card.network_options)
    model.load_weights(str(card.weights_path))
    return model
