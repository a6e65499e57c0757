"""`lczmap train`: train a network on public patch datasets or on patches sampled from staged cities."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import click

from ..errors import LczmapError
from ..nets import NETWORKS
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
              help="city.yaml with a `reference` polygon file: train on patches sampled from the staged city (repeatable).")
@click.option("--reference", type=click.Path(dir_okay=False), default=None,
              help="Training areas for --city, replacing city.yaml's `reference`: the LCZ Generator's KML/KMZ "
                   "(a folder per class) or a vector file with a class column.")
@click.option("--reference-column", default=None,
              help="Attribute holding the class (1-17, A-G, LCZ n, 101-107) [default: lcz, else FolderPath; KML: folders].")
@click.option("--network", default="msmla18", show_default=True, help=f"Network to train: {', '.join(NETWORKS)}.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Network option, e.g. cbam=standard (repeatable).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Model folder to write; rerunning with the same folder resumes.")
@click.option("--val", default=None,
              help="Validation data file (or LCZC-GES2 folder), or a fraction of the training data such as 0.1 "
                   "[default: 0.1, by polygon for cities; the GES2 validation split].")
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
    if (kw["reference"] or kw["reference_column"]) and not kw["cities"]:
        raise LczmapError("--reference and --reference-column go with --city (training areas of a staged city)")
    from ..train.trainer import TrainConfig, train

    if kw["network"] not in NETWORKS:
        raise LczmapError(f"--network {kw['network']}: unknown (known networks: {', '.join(NETWORKS)})")
    if bool(kw["data"]) == bool(kw["cities"]):
        raise LczmapError("give training data with --data FILE or --city city.yaml (one of the two)")
    quiet = bool(ctx.obj and ctx.obj.get("quiet"))
    out = Path(kw["out"])
    data, note = tuple(Path(p) for p in kw["data"]), {}
    if kw["cities"]:
        from ..train.city_patches import sample_city

        samples = out / "samples"
        data = tuple(sample_city(c, samples / f"{Path(c).resolve().parent.name}-{Path(c).stem}.h5", patch=kw["patch"], progress=not quiet,
                                 reference=kw["reference"], reference_column=kw["reference_column"])
                     for c in kw["cities"])
        note = {"cities": [str(Path(c).resolve()) for c in kw["cities"]], "city_samples": [str(p) for p in data]}
    config = TrainConfig(
        network=kw["network"], data=data, out=out, options=parse_options(kw["options"]), val=kw["val"],
        test=tuple(Path(p) for p in kw["tests"]), bands=tuple(b.strip() for b in kw["bands"].split(",")) if kw["bands"] else None,
        epochs=kw["epochs"], batch_size=kw["batch_size"], learning_rate=kw["learning_rate"], lr_decay=kw["lr_decay"],
        lr_step=kw["lr_step"], patience=kw["patience"], seed=kw["seed"], augment=kw["augment"], partition=kw["partition"],
        name=kw["name"], notes=kw["notes"], eager=kw["eager"], command=command_line(ctx), progress=not quiet, data_note=note,
    )
    card = train(config)
    val = card.metrics.get("validation", {})
    click.echo(
        f"wrote {out / 'card.json'}: {card.network}, best epoch {card.training.get('best_epoch')}, "
        f"validation OA {val.get('oa') or 0:.3f}, OA_w {val.get('oa_w') or 0:.3f}, kappa {val.get('kappa') or 0:.3f}"
    )

