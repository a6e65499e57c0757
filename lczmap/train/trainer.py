"""Train a network on patch datasets as the papers released it, resumably, and write a model folder (weights, card, plots)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np

from .. import __version__
from ..atomic import write_json_atomic
from ..card import ModelCard, write_card
from ..errors import LczmapError
from ..metrics import confusion_matrix, json_safe, scores
from ..nets import NETWORKS, build
from . import plots
from .datasets import MAX_NODES, PatchSource, band_statistics, open_sources, split_blocks, split_fraction
from .fine_tune import copy_weights, freeze_backbone, lineage, parent_card, trained_on
from .rules import MIN_BLOCK_KM
from .sequence import PatchSequence, balanced_class_weights, model_layout, needs_image

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
DEFAULT_VAL_FRACTION = 0.1


@dataclass(frozen=True)
class Recipe:
    """Training as released: Nadam, lr * decay ** (epoch // step), early stop on val_loss, best val_accuracy kept."""

    learning_rate: float
    decay: float
    step: int
    batch_size: int
    epochs: int
    patience: int
    source: str


_MSMLA = Recipe(1e-3, 0.004, 5, 32, 100, 15, "MSMLA release (src/train.py, lr.py)")
_DF4LCZ_S2 = Recipe(2e-3, 0.4, 5, 64, 100, 40, "DF4LCZ README command for the S2 stream; step 5 as in its lr.py helper")
RECIPES: dict[str, Recipe] = {
    "msmla18": _MSMLA,
    "msmla50": _MSMLA,
    "sen2lcz": Recipe(2e-3, 0.5, 5, 32, 100, 40, "So2Sat LCZ42 benchmark release (train.py)"),
    "df4lcz_s2": _DF4LCZ_S2,
    "df4lcz_gcn": Recipe(1e-2, 1.0, 5, 32, 100, 20, "DF4LCZ release (GNN_train.py, constant lr)"),
    # The paper trains the two streams apart and fuses afterwards; end-to-end fusion uses the S2 recipe.
    "df4lcz": _DF4LCZ_S2,
}


@dataclass(frozen=True)
class TrainConfig:
    """One `lczmap train` run. None values take the network's released recipe."""

    network: str
    data: tuple[Path, ...]
    out: Path
    options: dict[str, Any] = field(default_factory=dict)
    val: str | None = None  # validation file(s) separated by os.pathsep, or a fraction like "0.1"
    test: tuple[Path, ...] = ()
    bands: tuple[str, ...] | None = None
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    lr_decay: float | None = None
    lr_step: int | None = None
    patience: int | None = None
    seed: int = 0
    augment: bool = True
    partition: str = "random"
    name: str | None = None
    notes: str = ""  # free text for the card, e.g. what the model is (not) fit for
    command: str = ""
    progress: bool = True
    workers: int = min(4, os.cpu_count() or 1)
    eager: bool = False  # Keras run_eagerly: no graph tracing (tiny or debugging runs)
    data_note: dict[str, Any] = field(default_factory=dict)  # e.g. how city samples were made
    val_block_km: float = MIN_BLOCK_KM  # city patches without polygons: validation by spatial blocks this wide; 0: by patch
    init: str | None = None  # start from this model (name or folder): same network, input and bands
    init_sha256: str = ""  # its weights' checksum (set by train(); part of the fingerprint)
    freeze_backbone: bool = False  # with init: train only the class heads
    label_sources: tuple[dict[str, Any], ...] = ()  # where the labels came from, for the card's lineage

    def resolved(self) -> TrainConfig:
        """Fill the recipe's values for every option left unset."""
        if self.network not in RECIPES:
            raise LczmapError(f"--network {self.network}: unknown (known networks: {', '.join(NETWORKS)})")
        if self.freeze_backbone and not self.init:
            raise LczmapError("--freeze-backbone goes with --init MODEL (a trained backbone to keep)")
        if self.val_block_km and self.val_block_km < MIN_BLOCK_KM:
            raise LczmapError(f"--val-block-km {self.val_block_km:g}: validation blocks must be at least {MIN_BLOCK_KM:g} km "
                              "(0: split by patch)")
        r = RECIPES[self.network]
        pick = lambda v, d: d if v is None else v  # noqa: E731
        return replace(
            self, epochs=pick(self.epochs, r.epochs), batch_size=pick(self.batch_size, r.batch_size),
            learning_rate=pick(self.learning_rate, r.learning_rate), lr_decay=pick(self.lr_decay, r.decay),
            lr_step=pick(self.lr_step, r.step), patience=pick(self.patience, r.patience),
        )

    def fingerprint(self) -> dict[str, Any]:
        """What must not change between an interrupted run and its resume."""
        return json_safe({
            "network": self.network, "options": self.options, "data": [str(Path(p).resolve()) for p in self.data],
            "val": self.val, "bands": self.bands, "seed": self.seed, "partition": self.partition,
            "batch_size": self.batch_size,
            # Keys added later are present only when set, so checkpoints made before them still resume.
            **({"val_block_km": self.val_block_km} if self.val_block_km != MIN_BLOCK_KM else {}),
            **({"init": self.init_sha256, "freeze_backbone": self.freeze_backbone} if self.init else {}),
        })


def step_decay(learning_rate: float, decay: float, step: int):
    """The released schedule: lr * decay ** floor(epoch / step) (epochs counted from 0)."""
    return lambda epoch, lr=None: float(learning_rate * decay ** math.floor(epoch / step))


class TrainingState(keras.callbacks.Callback):
    """Early stopping on val_loss, best weights on val_accuracy, and a resumable checkpoint after every epoch.

    The checkpoint (weights with optimizer state, plus state.json with the epoch, history, early-stopping
    counters and the normalisation) is written to temporary names and renamed, so an interruption at any
    moment leaves the previous complete epoch to resume from.
    """

    def __init__(self, folder: Path, state: dict[str, Any], patience: int, sequence: PatchSequence):
        super().__init__()
        self.folder, self.state, self.patience, self.sequence = folder, state, patience, sequence

    @property
    def last_weights(self) -> Path:
        return self.folder / "last.weights.h5"

    @property
    def best_weights(self) -> Path:
        return self.folder / "best.weights.h5"

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.sequence.epoch = epoch  # the epoch's shuffle and augmentation draws

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = dict(logs or {})
        if "learning_rate" not in logs:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        s = self.state
        for key, value in logs.items():
            s["history"].setdefault(key, []).append(float(value))
        val_acc, val_loss = logs.get("val_accuracy", math.nan), logs.get("val_loss", math.nan)
        if s["best_val_accuracy"] is None or val_acc > s["best_val_accuracy"]:
            s["best_val_accuracy"], s["best_epoch"] = float(val_acc), epoch + 1
            self._save_weights(self.best_weights)
        if s["best_val_loss"] is None or val_loss < s["best_val_loss"]:
            s["best_val_loss"], s["wait"] = float(val_loss), 0
        else:
            s["wait"] += 1
            if s["wait"] >= self.patience:
                s["early_stopped"] = True
                self.model.stop_training = True
                log.info("early stop: val_loss has not improved for %d epochs", self.patience)
        s["epoch"] = epoch + 1
        self._save_weights(self.last_weights)
        _write_json(self.folder / "state.json", s)

    def _save_weights(self, path: Path) -> None:
        save_weights_atomic(self.model, path)


def save_weights_atomic(model: keras.Model, path: Path) -> None:
    """Save `model`'s weights to `path` so that a half-written file never replaces a good one. Keras insists on the
    `.weights.h5` suffix, so they are written inside a temporary folder of the project's naming (`.NAME.<pid>.tmp`,
    swept like any temporary of a killed run) and renamed into place."""
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    scratch.mkdir(exist_ok=True)
    try:
        model.save_weights(str(scratch / path.name))
        os.replace(scratch / path.name, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    write_json_atomic(path, json_safe(doc), indent=1)


def _load_state(folder: Path, config: TrainConfig) -> dict[str, Any] | None:
    path = folder / "state.json"
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise LczmapError(f"{path}: checkpoint state is not valid JSON; delete {folder} to start over") from None
    if state.get("fingerprint") != config.fingerprint():
        differ = sorted(k for k, v in config.fingerprint().items() if state.get("fingerprint", {}).get(k) != v)
        raise LczmapError(
            f"--out {config.out}: holds a checkpoint of a different run (differs in {', '.join(differ)}); "
            f"use another --out or delete {folder} to start over"
        )
    return state


def _validation(config: TrainConfig, train: PatchSource) -> tuple[PatchSource, np.ndarray, np.ndarray, dict[str, Any]]:
    """(validation source, train indices, validation indices, how the split was made)."""
    all_idx = np.arange(train.n)
    if config.val is None and train.format == "ges2":
        val = open_sources(config.data, split="validation", partition=config.partition)
        return val, all_idx, np.arange(val.n), {"split": f"LCZC-GES2 partition_{config.partition} train/validation"}
    spec = str(DEFAULT_VAL_FRACTION) if config.val is None else config.val
    try:
        fraction = float(spec)
    except ValueError:
        val = open_sources([Path(p) for p in spec.split(os.pathsep)], split="validation", partition=config.partition)
        return val, all_idx, np.arange(val.n), {"split": "validation file", "validation": val.describe()}
    blocks = train.blocks(config.val_block_km * 1000) if train.groups is None and config.val_block_km else None
    if blocks is not None:
        tr, va = split_blocks(blocks, fraction, config.seed)
        n_val_blocks = len(np.unique(blocks[va]))
        if not len(va):
            raise LczmapError(f"--val-block-km {config.val_block_km:g}: the training cities hold a single block of that size; "
                              "add cities, or split by patch with --val-block-km 0")
        return train, tr, va, {
            "split": f"spatial blocks of {config.val_block_km:g} km: random whole blocks, {fraction:g} of the patches (seed {config.seed})",
            "validation_blocks": {"block_km": config.val_block_km, "n_blocks": int(len(np.unique(blocks))),
                                  "n_validation_blocks": int(n_val_blocks)},
        }
    tr, va = split_fraction(train, fraction, config.seed)
    unit = "polygons" if train.groups is not None else "patches"
    return train, tr, va, {"split": f"stratified random {fraction:g} of the training {unit} (seed {config.seed})"}


def _band_index(config: TrainConfig, source: PatchSource) -> list[int] | None:
    if config.bands is None:
        return None
    missing = [b for b in config.bands if b not in source.bands]
    if missing:
        raise LczmapError(f"--bands {','.join(missing)}: not in {source.path} (its bands: {', '.join(source.bands)})")
    return [source.bands.index(b) for b in config.bands]


def _input_shape(network: str, source: PatchSource, n_bands: int) -> tuple[int, ...]:
    if len(NETWORKS[network].default_shape) == 2:  # graph network: (max_nodes, node features)
        return (MAX_NODES, 5)
    return (source.patch, source.patch, n_bands)


def predict_codes(model: keras.Model, sequence: PatchSequence, progress: bool = False) -> np.ndarray:
    """Predicted class codes 1..17 of every sample of a (non-shuffled) sequence, in its order."""
    probs = model.predict(sequence, verbose=1 if progress else 0)
    return np.argmax(probs, axis=-1).astype(np.int64) + 1


def jit_compile() -> bool | str:
    """XLA where it pays: on GPUs, and always on JAX (whose non-jitted mode is op by op).

    TensorFlow on CPU compiles XLA for minutes and then runs no faster, so it stays off there.
    """
    if keras.backend.backend() == "tensorflow" and not any(d.startswith("gpu") for d in keras.distribution.list_devices()):
        return False
    return "auto"


def train(config: TrainConfig) -> ModelCard:
    """Train (or resume) the run described by `config`; returns the card written into config.out."""
    config = config.resolved()
    keras.utils.set_random_seed(config.seed)
    train_src = open_sources(config.data, split="train", partition=config.partition)
    try:
        val_src, train_idx, val_idx, split_note = _validation(config, train_src)
    except BaseException:
        train_src.close()
        raise
    try:
        return _train(config, train_src, val_src, train_idx, val_idx, split_note)
    finally:
        train_src.close()
        val_src.close()


def _train(config: TrainConfig, train_src: PatchSource, val_src: PatchSource, train_idx: np.ndarray, val_idx: np.ndarray,
           split_note: dict[str, Any]) -> ModelCard:
    out, ckpt = Path(config.out), Path(config.out) / CHECKPOINT_DIR
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise LczmapError(f"--val {config.val}: leaves {len(train_idx)} training and {len(val_idx)} validation patches; both must be > 0")
    if (val_src.bands, val_src.patch) != (train_src.bands, train_src.patch):
        raise LczmapError(f"{val_src.path}: validation bands/patch differ from the training data's")
    band_index = _band_index(config, train_src)
    bands = tuple(config.bands) if config.bands else train_src.bands

    input_shape = _input_shape(config.network, train_src, len(bands))
    parent = parent_card(config.init, config.network, input_shape, bands, config.options) if config.init else None
    if parent is not None:
        config = replace(config, init_sha256=parent.weights_sha256)
    model = build(config.network, input_shape, **config.options)
    layout, image = model_layout(model), needs_image(model)
    if layout[1] and not train_src.has_graphs:
        raise LczmapError(f"--network {config.network}: needs segment graphs, which only LCZC-GES2 folders (gg_nodes_refine/) have")

    state = _load_state(ckpt, config)
    if state is None:
        if parent is not None:  # the parent's features were learnt on its normalisation
            mean, std = np.asarray(parent.mean), np.asarray(parent.std)
        elif image:
            mean, std = band_statistics(train_src, train_idx, progress=config.progress)
            if band_index is not None:
                mean, std = mean[band_index], std[band_index]
        else:
            mean, std = np.zeros(0), np.ones(0)
        state = {
            "fingerprint": config.fingerprint(), "epoch": 0, "history": {}, "best_val_accuracy": None, "best_epoch": None,
            "best_val_loss": None, "wait": 0, "early_stopped": False, "mean": mean.tolist(), "std": std.tolist(),
        }
    else:
        log.info("resuming %s from epoch %d", out, state["epoch"])
    mean, std = state["mean"], state["std"]

    weights = balanced_class_weights(train_src.labels[train_idx])
    common = dict(mean=mean if image else None, std=std if image else None, band_index=band_index, layout=layout,
                  image=image, workers=config.workers)
    train_seq = PatchSequence(train_src, train_idx, config.batch_size, class_weights=weights, shuffle=True,
                              augment=config.augment and image, seed=config.seed, **common)
    val_seq = PatchSequence(val_src, val_idx, config.batch_size, **common)

    trainable = freeze_backbone(model) if config.freeze_backbone else None
    model.compile(optimizer=keras.optimizers.Nadam(learning_rate=config.learning_rate),
                  loss="categorical_crossentropy", metrics=["accuracy"],
                  jit_compile=False if config.eager else jit_compile(), run_eagerly=config.eager)
    ckpt.mkdir(parents=True, exist_ok=True)  # only now: bad input above leaves no folder behind
    callback = TrainingState(ckpt, state, config.patience, train_seq)
    if parent is not None and state["epoch"] == 0:
        copy_weights(parent, model)
    if state["epoch"] > 0:
        model.optimizer.build(model.trainable_variables)
        model.load_weights(str(callback.last_weights))
    if state["epoch"] < config.epochs and not state["early_stopped"]:
        log.info("training %s on %d patches, validating on %d (epochs %d-%d)", config.network, len(train_idx), len(val_idx),
                 state["epoch"] + 1, config.epochs)
        schedule = keras.callbacks.LearningRateScheduler(step_decay(config.learning_rate, config.lr_decay, config.lr_step))
        model.fit(train_seq, validation_data=val_seq, epochs=config.epochs, initial_epoch=state["epoch"],
                  callbacks=[schedule, callback], verbose=1 if config.progress else 0)
    else:
        log.info("%s: training already finished at epoch %d; rewriting the model folder", out, state["epoch"])

    model.load_weights(str(callback.best_weights))
    cm_val = confusion_matrix(val_src.labels[val_idx], predict_codes(model, val_seq))
    metrics = {"validation": {**scores(cm_val), "confusion_matrix": cm_val.tolist()}}
    for path in config.test:
        test_src = open_sources([path], split="test", partition=config.partition)
        seq = PatchSequence(test_src, np.arange(test_src.n), config.batch_size, **common)
        cm_test = confusion_matrix(test_src.labels, predict_codes(model, seq))
        metrics[f"test:{Path(path).name}"] = {**scores(cm_test), "confusion_matrix": cm_test.tolist()}
        test_src.close()

    # Shipped weights hold the network only (no optimizer state): rebuild, copy, save.
    final = build(config.network, input_shape, **config.options)
    final.set_weights(model.get_weights())
    save_weights_atomic(final, out / "model.weights.h5")

    history = state["history"]
    _write_json(out / "history.json", history)
    plots.training_curves(history, out / "training_curves.png", state["best_epoch"])
    plots.confusion_figure(cm_val, out / "confusion_matrix.png", f"{config.network}: validation, OA {metrics['validation']['oa']:.3f}")

    recipe = RECIPES[config.network]
    training = {
        "data": train_src.describe(), **split_note, "n_train": int(len(train_idx)), "n_validation": int(len(val_idx)),
        "class_counts": {str(c): int(n) for c, n in enumerate(np.bincount(train_src.labels[train_idx], minlength=18)[1:], 1) if n},
        "class_weights": {str(c): float(w) for c, w in enumerate(weights, 1) if w},
        "optimizer": "Nadam", "learning_rate": config.learning_rate, "lr_decay": config.lr_decay, "lr_step_epochs": config.lr_step,
        "batch_size": config.batch_size, "max_epochs": config.epochs, "epochs_run": state["epoch"],
        "best_epoch": state["best_epoch"], "early_stopped": state["early_stopped"], "patience": config.patience,
        "augmentation": "random flips and 90-degree rotations" if config.augment and image else "none",
        "class_weighting": "balanced: n_samples / (n_present_classes * count_c), as per-sample weights",
        "normalisation": "per band (x - mean) / std over the training patches, NaN ignored; NaN -> 0 after normalising",
        "seed": config.seed, "recipe": asdict(recipe), "keras": keras.__version__, "backend": keras.backend.backend(),
        **config.data_note,
    }
    if parent is not None:
        training["fine_tuning"] = {
            "init": config.init, "parent": parent.name, "normalisation": "the parent model's mean and std",
            "freeze_backbone": config.freeze_backbone, "trainable_layers": trainable or "all",
        }
    trained = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    card = ModelCard(
        name=config.name or out.resolve().name, network=config.network, input_shape=tuple(input_shape), bands=bands if image else (),
        mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std), network_options=dict(config.options),
        training=json_safe(training), metrics=json_safe(metrics), command=config.command, notes=config.notes,
        lczmap_version=__version__, lineage=json_safe(lineage(parent, list(config.label_sources), trained)),
        trained_on=trained_on(config.label_sources), product_level="L2A" if config.data_note.get("cities") else "",
        folder=out.resolve(),
    )
    write_card(card, out)
    return card
