"""The quicklook figure: coordinates, north arrow, a scale bar off the map, caption, full legend, print resolution, formats."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
from odc.geo.geobox import GeoBox
from PIL import Image

from lczmap.errors import LczmapError
from lczmap.report import QUICKLOOK_DPI, quicklook, quicklook_figure


@pytest.fixture(scope="module")
def truth(demo_city: Path):
    """The demo city's true LCZ map (UTM, 100 m) and its grid."""
    with rasterio.open(demo_city / "truth_lcz.tif") as ds:
        return ds.read(1), ds.transform, ds.crs


def drawn(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def test_png_at_print_resolution(truth, tmp_path):
    lcz, transform, crs = truth
    out = quicklook(lcz, (transform, crs), tmp_path / "lcz.png", title="demo", dates=["2023-10-08"], model="msmla18-demo")
    with Image.open(out) as im:
        assert im.format == "PNG" and min(im.info["dpi"]) >= 200 and im.size[0] >= 1500
    assert QUICKLOOK_DPI >= 200


def test_figure_has_coordinates_north_arrow_scale_bar_off_the_map_caption_and_full_legend(truth):
    import matplotlib.pyplot as plt

    lcz, transform, crs = truth
    aoi = np.ones(lcz.shape, bool)
    shown = lcz.copy()
    shown[:3, :3] = 0  # unmapped cells inside the AOI: "no data" in the legend
    fig = quicklook_figure(shown, (transform, crs), aoi_mask=aoi, dates=["2023-10-08", "2023-10-13"], model="msmla18-demo")
    renderer = drawn(fig)
    ax = fig.axes[0]
    frame = ax.get_window_extent(renderer)
    xlabels = [t.get_text() for t in ax.get_xticklabels()]
    ylabels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(xlabels) >= 2 and all(t.endswith(("°E", "°W")) for t in xlabels)
    assert len(ylabels) >= 2 and all(t.endswith(("°N", "°S")) for t in ylabels)
    for gid in ("scale_bar", "north_arrow"):
        artists = [a for a in ax.get_children() if a.get_gid() == gid]
        assert artists, gid
        for a in artists:
            box = a.get_window_extent(renderer)
            assert not box.overlaps(frame), f"{gid} covers the map"
    caption = next(a for a in ax.get_children() if a.get_gid() == "caption").get_text().replace("\n", " ")
    assert f"EPSG:{crs.to_epsg()}" in caption and "cell 100 m" in caption
    assert "image dates 2023-10-08, 2023-10-13" in caption and "model msmla18-demo" in caption
    texts = ax.get_legend().get_texts()
    assert len(texts) == 18 and texts[-1].get_text() == "no data"  # all 17 classes, then the unmapped cells
    present = set(np.unique(shown)) - {0}
    for code, text in enumerate(texts[:17], start=1):
        assert (text.get_fontweight() == "bold") == (code in present), text.get_text()
    plt.close(fig)


def test_a_geographic_map_gets_the_same_scale_bar(truth, tmp_path):
    """The map reprojected to EPSG:4326: the same scale-bar length (measured on the ellipsoid) and its lon/lat cell size."""
    import matplotlib.pyplot as plt
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    lcz, transform, crs = truth
    dst_t, w, h = calculate_default_transform(crs, "EPSG:4326", lcz.shape[1], lcz.shape[0],
                                              *rasterio.transform.array_bounds(*lcz.shape, transform))
    geo = np.zeros((h, w), np.uint8)
    reproject(lcz, geo, src_transform=transform, src_crs=crs, dst_transform=dst_t, dst_crs="EPSG:4326",
              resampling=Resampling.nearest, src_nodata=0, dst_nodata=0)
    box = GeoBox((h, w), dst_t, "EPSG:4326")
    captions = []
    for array, grid in ((lcz, (transform, crs)), (geo, box)):
        fig = quicklook_figure(array, grid)
        drawn(fig)
        ax = fig.axes[0]
        captions.append(next(a for a in ax.get_children() if a.get_gid() == "caption").get_text().replace("\n", " "))
        plt.close(fig)
    scale = [c.split("scale bar ")[1].split(" ·")[0] for c in captions]
    assert scale[0] == scale[1] == "500 m"
    assert "EPSG:4326" in captions[1] and "°" in captions[1].split("cell ")[1]
    assert "image date(s) not recorded" in captions[0]


@pytest.mark.parametrize("name, fmt, magic", [("q.pdf", None, b"%PDF"), ("q.svg", None, b"<?xml"), (".q.png.123.tmp", "png", b"\x89PNG"),
                                               ("q.tmp", None, b"\x89PNG"), ("q.png", "svg", b"<?xml")])
def test_format_by_suffix_or_option(truth, tmp_path, name, fmt, magic):
    lcz, transform, crs = truth
    out = quicklook(lcz[:10, :10], (transform, crs), tmp_path / name, fmt=fmt, dpi=100)
    assert out.read_bytes().startswith(magic)


def test_unknown_format_is_refused(truth, tmp_path):
    lcz, transform, crs = truth
    with pytest.raises(LczmapError, match="quicklook format 'jpg'"):
        quicklook(lcz, (transform, crs), tmp_path / "q.png", fmt="jpg")
    assert not (tmp_path / "q.png").exists()


def test_a_large_map_is_drawn_decimated(truth):
    import matplotlib.pyplot as plt

    lcz, transform, crs = truth
    big = np.tile(lcz, (1, 250))[:, :7000]
    fig = quicklook_figure(big, (transform, crs))
    image = fig.axes[0].get_images()[0].get_array()
    assert big.shape[1] == 7000 and image.shape[1] == 2334
    caption = next(a for a in fig.axes[0].get_children() if a.get_gid() == "caption").get_text().replace("\n", " ")
    assert "drawn at 1/3 resolution" in caption
    plt.close(fig)


@pytest.mark.parametrize("shape", [(20, 200), (200, 20), (30, 30)], ids=["wide", "tall", "square"])
def test_nothing_overlaps_whatever_the_map_shape(shape):
    """Frame, legend, caption, scale bar, north arrow and the lon/lat labels keep clear of each other."""
    import matplotlib.pyplot as plt
    from rasterio.transform import from_origin

    lcz = (np.arange(shape[0] * shape[1]).reshape(shape) // 7 % 17 + 1).astype(np.uint8)
    fig = quicklook_figure(lcz, (from_origin(500_000, 4_000_000, 100, 100), "EPSG:32633"), dates=["2024-06-01"], model="m")
    renderer = drawn(fig)
    ax = fig.axes[0]
    boxes = {"frame": ax.get_window_extent(renderer), "legend": ax.get_legend().get_window_extent(renderer)}
    for gid in ("caption", "scale_bar", "north_arrow"):
        for i, artist in enumerate(a for a in ax.get_children() if a.get_gid() == gid):
            boxes[f"{gid}{i}"] = artist.get_window_extent(renderer)
    names = sorted(boxes)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if a.rstrip("0123456789") != b.rstrip("0123456789"):
                assert not boxes[a].overlaps(boxes[b]), (a, b)
    for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        extents = [t.get_window_extent(renderer) for t in labels if t.get_text()]
        assert extents
        assert not any(p.overlaps(q) for k, p in enumerate(extents) for q in extents[k + 1:])
    plt.close(fig)
