"""`lczmap train`: train a network on public patch datasets or on patches sampled from staged cities."""

from __future__ import annotations

import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from ..errors import LczmapError
from ..nets import NETWORKS
from ..train.rules import CODINGS, DEFAULT_MAX_PER_CLASS, DEFAULT_MIN_AGREEMENT, MIN_BLOCK_KM
from . import cli


def parse_options(items: tuple[str, ...]) -> dict[str, Any]:
    """KEY=VALUE strings -> dict, values read as YAML scalars/lists (cbam=standard, depth=17, widths=[16,32,64])."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise LczmapError(f"--option {item}: expected KEY=VALUE, e.g. cbam=standard")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def command_line(ctx: click.Context) -> str:
    """The command as a user would retype it: the network and every option that differs from its default, in declaration order."""
    words = ["lczmap", ctx.info_name or "train"]
    for param in ctx.command.params:
        if not isinstance(param, click.Option):
            continue
        value = ctx.params.get(param.name)
        flag = param.opts[-1] if len(param.opts) > 1 and param.opts[-1].startswith("--") else param.opts[0]
        default = param.get_default(ctx)
        if param.is_flag:
            if bool(value) != bool(default):
                words.append(flag if value else param.secondary_opts[0])
            continue
        if value is None or (value == default and param.name != "network") or (param.multiple and not value):
            continue
        for v in value if param.multiple else (value,):
            words += [flag, str(v)]
    return shlex.join(words)


@cli.command("train")
@click.option("--data", "data", multiple=True, type=click.Path(),
              help="Training data: So2Sat LCZ42 / MSMLA .h5, or a LCZC-GES2 folder (repeatable).")
@click.option("--city", "cities", multiple=True, type=click.Path(dir_okay=False),
              help="city.yaml with a `reference` (polygons or an LCZ raster): train on patches sampled from the staged city "
                   "(repeatable).")
@click.option("--reference", type=click.Path(dir_okay=False), default=None,
              help="Labels for --city, replacing city.yaml's `reference`: the LCZ Generator's KML/KMZ (a folder per class), "
                   "a vector file with a class column, or an LCZ map (GeoTIFF in any CRS and resolution: the global LCZ map, "
                   "a WUDAPT or LCZ Generator map, w2w's WRF codes), brought onto the grid by majority.")
@click.option("--reference-column", default=None,
              help="Attribute holding the class (1-17, A-G, LCZ n, 101-107) [default: lcz, else FolderPath; KML: folders].")
@click.option("--reference-band", default=None,
              help="Band of an LCZ raster --reference: a number (1 = first) or a description [default: lczFilter, else lcz, else 1].")
@click.option("--reference-codes", type=click.Choice(CODINGS), default="auto", show_default=True,
              help="Codes of an LCZ raster: lcz (1-17, 101-107 for A-G) or wrf (w2w's LU_INDEX: 31-41 or 51-61 for LCZ 1-10 "
                   "and E); auto: wrf when such values occur.")
@click.option("--min-probability", type=click.FloatRange(0, 100), default=None,
              help="Keep raster labels whose probability band (e.g. the global map's classProbability) is at least this "
                   "percentage [default: not used].")
@click.option("--min-agreement", type=click.IntRange(0, 9), default=None,
              help=f"Keep raster labels held by at least this many cells of their 3 x 3 neighbourhood, the cell included; 0: off "
                   f"[default: {DEFAULT_MIN_AGREEMENT}, off with --min-probability].")
@click.option("--max-per-class", type=click.IntRange(min=0), default=DEFAULT_MAX_PER_CLASS, show_default=True,
              help="Class-balanced raster labels: at most this many cells per class per city, drawn at random; 0: no cap.")
@click.option("--soft-labels", is_flag=True, default=False,
              help="Raster labels as class shares of each cell's 3 x 3 neighbourhood (a coarse map's uncertainty) "
                   "instead of its one class; the cell takes the most frequent class.")
@click.option("--network", default="msmla18", show_default=True, help=f"Network to train: {', '.join(NETWORKS)}.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Network option, e.g. cbam=standard (repeatable).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Model folder to write; rerunning with the same folder resumes.")
@click.option("--val", default=None,
              help="Validation data file (or LCZC-GES2 folder), or a fraction of the training data such as 0.1 "
                   "[default: 0.1, by polygon for cities; the GES2 validation split].")
@click.option("--val-block-km", type=click.FloatRange(min=0), default=MIN_BLOCK_KM, show_default=True,
              help="City patches labelled by a raster: a --val fraction is drawn as whole spatial blocks this wide "
                   f"(at least {MIN_BLOCK_KM:g} km), so no validation patch has a training neighbour; 0: by patch.")
@click.option("--init", default=None,
              help="Start from this model (name or folder) instead of random weights: the same network, bands and patch "
                   "size, which default to the model's; its normalisation is kept.")
@click.option("--freeze-backbone", is_flag=True, default=False, help="With --init: train only the class heads.")
@click.option("--test", "tests", multiple=True, type=click.Path(),
              help="Test data scored with the best weights; results go into the card (repeatable).")
@click.option("--bands", default=None, help="Comma-separated subset of the data's bands to train on (default: all).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Maximum epochs [released: 100].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Batch size [released: 32; DF4LCZ S2 stream 64].")
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Initial learning rate [released per network].")
@click.option("--lr-decay", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Learning-rate factor applied every --lr-step epochs [released per network].")
@click.option("--lr-step", type=click.IntRange(min=1), default=None, help="Epochs between learning-rate steps [5].")
@click.option("--patience", type=click.IntRange(min=1), default=None,
              help="Early-stopping patience on validation loss [released per network].")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Random seed (weights, split, shuffling, augmentation).")
@click.option("--augment/--no-augment", default=True, show_default=True, help="Random flips and 90-degree rotations.")
@click.option("--partition", default="random", show_default=True,
              help="LCZC-GES2 split file patches_split/partition_NAME.npz.")
@click.option("--patch", type=click.IntRange(min=8), default=48, show_default=True,
              help="Patch size sampled from --city inputs.")
@click.option("--eager", is_flag=True, default=False,
              help="Run Keras eagerly: no graph tracing, so tiny or debugging runs start at once (each step is slower).")
@click.option("--name", default=None, help="Model name in the card [default: the --out folder name].")
@click.option("--notes", default="", help="Free text for the card: what the model is for and what it is not for.")
@click.pass_context
def train_cmd(ctx: click.Context, **kw: Any) -> None:
    """Train a network and write a model folder: model.weights.h5, card.json, training curves and confusion PNGs.

    Training follows the released recipes (Nadam, step-decay learning rate, early stopping on validation
    loss, best epoch by validation accuracy, flips and rotations) with balanced class weights and per-band
    normalisation. A checkpoint is written every epoch into OUT/checkpoint; rerun the same command to resume.
    """
    raster_options = ("reference_band", "reference_codes", "min_probability", "min_agreement", "max_per_class", "soft_labels")
    given = [k for k in ("reference", "reference_column", *raster_options)
             if ctx.get_parameter_source(k) != click.core.ParameterSource.DEFAULT]
    if given and not kw["cities"]:
        raise LczmapError(f"--{given[0].replace('_', '-')} goes with --city (labels of a staged city)")
    from ..train.city_patches import sample_city, sample_labels
    from ..train.raster_labels import file_date
    from ..train.rules import LabelRules
    from ..train.trainer import TrainConfig, train

    if bool(kw["data"]) == bool(kw["cities"]):
        raise LczmapError("give training data with --data FILE or --city city.yaml (one of the two)")
    _parent_defaults(ctx, kw)
    quiet = bool(ctx.obj and ctx.obj.get("quiet"))
    out = Path(kw["out"])
    config = TrainConfig(
        network=kw["network"], data=tuple(Path(p) for p in kw["data"]), out=out, options=parse_options(kw["options"]),
        val=kw["val"], test=tuple(Path(p) for p in kw["tests"]),
        bands=tuple(b.strip() for b in kw["bands"].split(",")) if kw["bands"] else None,
        epochs=kw["epochs"], batch_size=kw["batch_size"], learning_rate=kw["learning_rate"], lr_decay=kw["lr_decay"],
        lr_step=kw["lr_step"], patience=kw["patience"], seed=kw["seed"], augment=kw["augment"], partition=kw["partition"],
        name=kw["name"], notes=kw["notes"], eager=kw["eager"], command=command_line(ctx), progress=not quiet,
        val_block_km=kw["val_block_km"], init=kw["init"], freeze_backbone=kw["freeze_backbone"],
    )
    config.resolved()  # refuses bad options before any city is staged
    data, note = config.data, {}
    sources = [{"path": str(p.resolve()), "kind": "patch dataset", "modified": file_date(p)} for p in data if p.exists()]
    if kw["cities"]:
        if kw["init"]:  # a model that cannot take these patches is refused before they are cut
            from ..stage import BANDS
            from ..train.fine_tune import parent_card

            bands = config.bands or BANDS
            parent_card(kw["init"], config.network, (kw["patch"], kw["patch"], len(bands)), bands, config.options)
        rules = LabelRules(band=kw["reference_band"], codes=kw["reference_codes"], min_probability=kw["min_probability"],
                           min_agreement=kw["min_agreement"], max_per_class=kw["max_per_class"], soft=kw["soft_labels"],
                           seed=kw["seed"])
        samples = out / "samples"
        data = tuple(sample_city(c, samples / f"{Path(c).resolve().parent.name}-{Path(c).stem}.h5", patch=kw["patch"], progress=not quiet,
                                 reference=kw["reference"], reference_column=kw["reference_column"], rules=rules)
                     for c in kw["cities"])
        labels = [sample_labels(p) for p in data]
        note = {"cities": [str(Path(c).resolve()) for c in kw["cities"]], "city_samples": [str(p) for p in data], "labels": labels}
        sources = [{"city": lab["city"], **lab["reference"]} for lab in labels]
    card = train(replace(config, data=data, data_note=note, label_sources=tuple(sources)))
    val = card.metrics.get("validation", {})
    click.echo(
        f"wrote {out / 'card.json'}: {card.network}, best epoch {card.training.get('best_epoch')}, "
        f"validation OA {val.get('oa') or 0:.3f}, OA_w {val.get('oa_w') or 0:.3f}, kappa {val.get('kappa') or 0:.3f}"
    )


def _parent_defaults(ctx: click.Context, kw: dict[str, Any]) -> None:
    """With --init, the network, patch size and bands not given on the command line are the parent model's."""
    if not kw["init"]:
        return
    from ..train.fine_tune import load_parent

    parent = load_parent(kw["init"])
    chosen = {}
    if ctx.get_parameter_source("network") == click.core.ParameterSource.DEFAULT:
        chosen["network"] = parent.network
    if ctx.get_parameter_source("patch") == click.core.ParameterSource.DEFAULT and len(parent.input_shape) == 3:
        chosen["patch"] = parent.patch_size
    if kw["bands"] is None and parent.bands:
        chosen["bands"] = ",".join(parent.bands)
    kw.update(chosen)
    ctx.params.update(chosen)  # so that the card's command line says what was run
