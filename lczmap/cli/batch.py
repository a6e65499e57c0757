"""`lczmap batch`: map every city of a pipeline file on one Dask cluster, resumably."""

from __future__ import annotations

import click

from . import cli
from .options import SCHEDULER, threads_opt
from ..errors import LczmapError


@cli.command("batch")
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes of the local Dask cluster (default: one per CPU core).")
@threads_opt
@click.option("--gpus", default=None, metavar="IDS",
              help="GPU machines: one local worker per listed CUDA device (e.g. 0,1,2,3), each seeing only its own GPU.")
@click.option("--scheduler", type=SCHEDULER, default=None,
              help="Use the running Dask cluster at this address (e.g. tcp://host:8786) instead of a local one.")
@click.pass_context
def batch_cmd(ctx: click.Context, pipeline: str, workers: int | None, threads: int | None, gpus: str | None,
              scheduler: str | None) -> None:
    """Map many cities: PIPELINE is a YAML file with output_dir, optional predict options and a list of cities.

    Writes OUTPUT_DIR/<name>.tif (with its summary JSON, quicklook and record <name>.batch.json, committed
    together) per city and OUTPUT_DIR/manifest.json. Run the same command again after an interruption: finished
    cities are skipped (their checksum is verified) and the others are redone. Exits 1 when any city failed (one
    line each); the others are still mapped.
    """
    # the pipeline is imported when the command runs, so `lczmap --help` stays fast
    from ..batch import load_pipeline, run_batch
    from ..cluster import check_cluster_options

    check_cluster_options(workers, threads, scheduler, gpus)
    gpu_ids = [g.strip() for g in gpus.split(",")] if gpus is not None else None
    if gpu_ids is not None and not all(g.isdigit() for g in gpu_ids):
        raise LczmapError(f"--gpus {gpus}: expected CUDA device numbers separated by commas, e.g. 0,1")
    pipe = load_pipeline(pipeline)
    quiet = ctx.obj.get("quiet", False)

    def report(name: str, entry: dict) -> None:
        if entry["status"] == "failed":
            click.echo(f"failed   {name}: {entry['error']}", err=True)
        elif not quiet:
            seconds = sum(entry.get("seconds", {}).values())
            detail = "unchanged since the last run" if entry["status"] == "skipped" else f"{seconds:.1f} s"
            click.echo(f"{entry['status']:<8} {name} -> {pipe.output_dir / entry['output']} ({detail})", err=True)

    manifest = run_batch(pipe, workers=workers, threads=threads, gpus=gpu_ids, scheduler=scheduler, on_city=report)
    failed = [name for name, entry in manifest["cities"].items() if entry["status"] == "failed"]
    if failed:
        raise LczmapError(
            f"{len(failed)} of {len(manifest['cities'])} cities failed ({', '.join(failed)}); "
            f"see {pipe.output_dir / 'manifest.json'}"
        )
