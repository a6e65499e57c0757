"""`lczmap demo-data`: write a synthetic demo city (all inputs plus the LCZ truth) into a folder."""

from __future__ import annotations

from pathlib import Path

import click

from . import cli


@cli.command("demo-data")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Random seed: the same seed gives the same city."
)
@click.option("--size-km", type=float, default=8.0, show_default=True, help="Width of the city's square AOI in km (1-40).")
@click.option("--scenes", type=int, default=3, show_default=True,
              help="Sentinel-2 products of the city on different dates (clouds, season, a swath edge); 1-12.")
@click.option("--catalog", is_flag=True,
              help="Also write FOLDER/catalog/: the city as a static STAC catalog of COGs laid out as Earth Search "
                   "lays it out, plus items.ndjson for a STAC API server (see README, Map a real city).")
def demo_cmd(folder: Path, seed: int, size_km: float, scenes: int, catalog: bool) -> None:
    """Generate a demo city in FOLDER: AOI, Sentinel-2 L2A SAFE products (--scenes), DSM/DTM, WorldCover, OSM, VHR image, training
    areas, LCZ truth and a city.yaml that the other commands read (e.g. lczmap stage --config FOLDER/city.yaml)."""
    from ..demo import generate

    config = generate(folder, seed=seed, size_km=size_km, scenes=scenes)
    if catalog:
        from ..demo.catalog import write_catalog

        write_catalog(folder)
    click.echo(str(config))
