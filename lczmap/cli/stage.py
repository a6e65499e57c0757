"""`lczmap stage`: check a city's inputs and write its 13-band 10 m stack (Zarr, resumable, or GeoTIFF) plus a report."""

from __future__ import annotations

import click

from . import cli
from .options import (RESOLUTION, city_input_options, city_overrides, composite_options, scheduler_opt, threads_opt,
                      with_stac_items, workers_opt)


@cli.command("stage")
@city_input_options
@click.option("--out", "out", required=True, type=click.Path(), help="Output stack: a .zarr store (resumable) or a .tif file.")
@click.option("--resolution", type=RESOLUTION, default=100.0, show_default=True, help="Output cell size in metres (multiple of the 10 m base grid).")
@click.option("--chunk", type=click.IntRange(min=64, max=4096), default=512, show_default=True, help="Chunk side in base pixels.")
@workers_opt
@threads_opt
@scheduler_opt
@composite_options
@click.option("--valid-count", is_flag=True, help="Add a band valid_count: clear Sentinel-2 observations per pixel.")
@click.pass_context
def stage_cmd(ctx: click.Context, config_path: str | None, out: str, resolution: float, chunk: int, workers: int | None,
              threads: int | None, scheduler: str | None, composite: str, mask_snow: bool, stac_url: str | None, stac_datetime: str | None, max_cloud: float | None,
              valid_count: bool, **kwargs) -> None:
    """Read, check and resample every input of a city onto its 10 m base grid.

    Writes OUT (bands B02..B12, osm_buildings, dsm, landcover; NaN = nodata) and OUT.report.json with
    each source's CRS, resolution, AOI coverage and the Sentinel-2 cloud fraction. Re-running the same
    command after an interruption resumes a Zarr store where it stopped.
    """
    # the pipeline is imported when the command runs, so `lczmap --help` stays fast
    from ..aoi import read_aoi
    from ..cluster import check_cluster_options
    from ..config import load_city_config
    from ..grid import check_stack_size, city_grid
    from ..stage import check_stack_output, stage_city, write_stack

    check_cluster_options(workers, threads, scheduler)
    check_stack_output(out)  # refuse a bad --out before any input is read
    config = load_city_config(config_path, **city_overrides(kwargs))
    config = with_stac_items(config, stac_url, stac_datetime, max_cloud, out)
    aoi = read_aoi(config.aoi)
    check_stack_size(aoi, config.aoi)  # before any grid is made or any input opened over it
    grid = city_grid(aoi, resolution=resolution)
    staged = stage_city(config, grid, chunk=chunk, composite=composite, valid_count=valid_count, mask_snow=mask_snow)
    report = write_stack(staged, out, progress=not ctx.obj.get("quiet"), workers=workers,
                         threads=threads, scheduler=scheduler)
    if not ctx.obj.get("quiet"):
        s2 = report["sources"]["sentinel2"]
        pct = lambda v: "unknown" if v is None else f"{v:.1%}"  # noqa: E731
        missing = f"; missing: {', '.join(report['missing'])}" if report["missing"] else ""
        click.echo(
            f"Wrote {out} ({report['grid']['shape'][0]} x {report['grid']['shape'][1]} px at 10 m): valid Sentinel-2 "
            f"on {pct(report['valid_fraction'])} of the AOI, clouds {pct(s2.get('cloud_fraction'))}{missing}"
        )
