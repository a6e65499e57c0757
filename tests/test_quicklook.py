"""The quicklook figure: one journal column wide with no text under 7 pt, a title from the city and dates, north
arrow and scale bar inside the frame with a halo, a haloed graticule, caption, credits, full legend, formats."""

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from matplotlib.text import Text
from odc.geo.geobox import GeoBox
from PIL import Image
from rasterio.transform import from_origin

from lczmap.errors import LczmapError, OutputError
from lczmap.report import QUICKLOOK_DPI, credits_for, quicklook, quicklook_figure, quicklook_title

ONE_COLUMN_IN = 8.5 / 2.54
PAD_IN = 0.03  # what quicklook's savefig adds around the drawn figure


@pytest.fixture(scope="module")
def truth(demo_city: Path):
    """The demo city's true LCZ map (UTM, 100 m) and its grid."""
    with rasterio.open(demo_city / "truth_lcz.tif") as ds:
        return ds.read(1), ds.transform, ds.crs


def drawn(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def gid_artists(ax, gid):
    return [a for a in ax.get_children() if a.get_gid() == gid]


def every_class(shape) -> np.ndarray:
    """A map where every class is present (the widest legend), in stripes."""
    return (np.arange(shape[0] * shape[1]).reshape(shape) // 7 % 17 + 1).astype(np.uint8)


def test_png_at_print_resolution_and_one_column_wide(truth, tmp_path):
    lcz, transform, crs = truth
    out = quicklook(lcz, (transform, crs), tmp_path / "lcz.png", city="demo", dates=["2023-10-08"], model="msmla18-demo")
    with Image.open(out) as im:
        dpi = min(im.info["dpi"])
        assert im.format == "PNG" and dpi >= 299 and QUICKLOOK_DPI >= 300
        assert im.size[0] / dpi <= ONE_COLUMN_IN + 0.01  # printed at one column, nothing is scaled down


@pytest.mark.parametrize("shape", [(20, 200), (200, 20), (30, 30), (31, 31)], ids=["wide", "tall", "square", "demo"])
def test_every_text_is_at_least_7_pt_at_one_column(truth, shape):
    """Drawn at 8.5 cm (or narrower, so it only grows when printed one column wide), with the widest legend."""
    import matplotlib.pyplot as plt

    lcz, transform, crs = truth
    if shape == (31, 31):
        lcz = lcz.copy()
        lcz[:2, :17] = np.arange(1, 18)
        grid = (transform, crs)
    else:
        lcz, grid = every_class(shape), (from_origin(500_000, 4_000_000, 100, 100), "EPSG:32633")
    credits = credits_for(["sentinel2", "copernicus_dem", "worldcover", "osm"], years=["2023"])
    fig = quicklook_figure(lcz, grid, city="Daegu", dates=["2023-10-08", "2023-10-13"], model="msmla18-demo",
                           credits=credits, dpi=100)
    renderer = drawn(fig)
    width = fig.get_tightbbox(renderer).width + 2 * PAD_IN
    assert width <= ONE_COLUMN_IN + 0.005, width
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    assert len(texts) > 25  # title, ticks, arrow, scale bar, legend, caption, credits
    for text in texts:
        assert text.get_fontsize() * ONE_COLUMN_IN / width >= 7 - 1e-9, (text.get_text(), text.get_fontsize())
    assert len(fig.axes[0].get_legend().get_texts()) == 17
    plt.close(fig)


def test_title_from_city_and_date_range():
    assert quicklook_title("Seoul", ["2022-10-05", "2022-09-20", "2022-09-25"]) == \
        "Seoul: Local Climate Zones, 2022-09-20 to 2022-10-05"
    assert quicklook_title("Seoul", ["2022-09-20"]) == "Seoul: Local Climate Zones, 2022-09-20"
    assert quicklook_title("Seoul") == "Seoul: Local Climate Zones"
    assert quicklook_title() == "Local Climate Zones"


def test_figure_has_title_coordinates_haloed_north_arrow_and_scale_bar_inside_caption_and_full_legend(truth):
    import matplotlib.pyplot as plt

    lcz, transform, crs = truth
    aoi = np.ones(lcz.shape, bool)
    shown = lcz.copy()
    shown[:3, :3] = 0  # unmapped cells inside the AOI: "no data" in the legend
    fig = quicklook_figure(shown, (transform, crs), aoi_mask=aoi, city="Daegu", dates=["2023-10-13", "2023-10-08"],
                           model="msmla18-demo", dpi=100)
    renderer = drawn(fig)
    ax = fig.axes[0]
    frame = ax.get_window_extent(renderer)
    (title,) = gid_artists(ax, "title")
    assert title.get_text().replace("\n", " ") == "Daegu: Local Climate Zones, 2023-10-08 to 2023-10-13"
    assert title.get_window_extent(renderer).y0 >= frame.y1  # above the map
    xlabels = [t.get_text() for t in ax.get_xticklabels()]
    ylabels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(xlabels) >= 2 and all(t.endswith(("°E", "°W")) for t in xlabels)
    assert len(ylabels) >= 2 and all(t.endswith(("°N", "°S")) for t in ylabels)
    for gid in ("scale_bar", "north_arrow"):
        artists = gid_artists(ax, gid)
        assert len(artists) >= 2, gid
        for a in artists:
            box = a.get_window_extent(renderer)
            assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, (gid, box, frame)
            effects = a.arrow_patch.get_path_effects() if hasattr(a, "arrow_patch") and a.arrow_patch else a.get_path_effects()
            if gid == "north_arrow" or a.get_path_effects():
                assert effects, f"{gid} has no halo"
    arrow = next(a.get_window_extent(renderer) for a in gid_artists(ax, "north_arrow"))
    bar = gid_artists(ax, "scale_bar")[0].get_window_extent(renderer)
    assert arrow.x0 > frame.x0 + frame.width / 2 and arrow.y0 > frame.y0 + frame.height / 2  # top right
    assert bar.x1 < frame.x0 + frame.width / 2 and bar.y1 < frame.y0 + frame.height / 2  # bottom left
    caption = gid_artists(ax, "caption")[0].get_text().replace("\n", " ")
    assert f"EPSG:{crs.to_epsg()}" in caption and "cell 100 m" in caption
    assert "image dates 2023-10-13, 2023-10-08" in caption and "model msmla18-demo" in caption
    assert not gid_artists(ax, "credits")  # none given, none drawn
    texts = ax.get_legend().get_texts()
    assert len(texts) == 18 and texts[-1].get_text() == "no data"  # all 17 classes, then the unmapped cells
    present = set(np.unique(shown)) - {0}
    for code, text in enumerate(texts[:17], start=1):
        assert (text.get_fontweight() == "bold") == (code in present), text.get_text()
    plt.close(fig)


def test_graticule_shows_over_the_darkest_class():
    """A map all of class E (black): the meridians and parallels still show, as light haloed lines."""
    import matplotlib.pyplot as plt

    black = np.full((40, 40), 15, np.uint8)
    fig = quicklook_figure(black, (from_origin(500_000, 4_000_000, 100, 100), "EPSG:32633"), dpi=100)
    renderer = drawn(fig)
    frame = fig.axes[0].get_window_extent(renderer)
    pixels = np.asarray(fig.canvas.buffer_rgba())[::-1, :, :3].mean(axis=2)  # rows from the bottom, as display units
    inner = pixels[int(frame.y0 + 0.3 * frame.height):int(frame.y0 + 0.7 * frame.height),
                   int(frame.x0 + 0.3 * frame.width):int(frame.x0 + 0.7 * frame.width)]  # clear of arrow and scale bar
    assert (inner > 150).mean() > 0.01, "no light graticule over the black class"
    plt.close(fig)


def test_credits_from_the_kinds_of_input_used(truth):
    import matplotlib.pyplot as plt

    assert credits_for(["osm", "dsm", "sentinel2", "osm"], years=["2023-10-08", "2022-09-20"]) == [
        "Contains modified Copernicus Sentinel data 2022-2023", "©\u00a0OpenStreetMap contributors (ODbL)"]
    assert credits_for(["sentinel2"], years=["2023-10-08"]) == ["Contains modified Copernicus Sentinel data 2023"]
    every = credits_for(["worldcover", "copernicus_dem", "osm", "sentinel2"])
    assert [c.split(" ")[0] for c in every] == ["Contains", "Copernicus", "ESA", "©\u00a0OpenStreetMap"]
    assert credits_for(["vhr", "landcover"]) == []  # a user's own files ask for no credit

    lcz, transform, crs = truth
    fig = quicklook_figure(lcz, (transform, crs), credits=every, dpi=100)
    renderer = drawn(fig)
    ax = fig.axes[0]
    (credits,) = gid_artists(ax, "credits")
    text = credits.get_text().replace("\n", " ")
    assert text.startswith("Data: Contains modified Copernicus Sentinel data") and "OpenStreetMap contributors" in text
    assert "Copernicus DEM" in text and "ESA WorldCover" in text
    below = credits.get_window_extent(renderer)
    assert below.y1 <= gid_artists(ax, "caption")[0].get_window_extent(renderer).y0  # under the caption
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
        fig = quicklook_figure(array, grid, dpi=100)
        drawn(fig)
        ax = fig.axes[0]
        captions.append(gid_artists(ax, "caption")[0].get_text().replace("\n", " "))
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


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_failed_write_names_the_final_file(truth, tmp_path):
    """A full disk while the quicklook's temporary is written: one line naming the file the user asked for."""
    lcz, transform, crs = truth
    tmp = tmp_path / f".lcz.png.{os.getpid()}.tmp"
    tmp.symlink_to("/dev/full")
    with pytest.raises(OutputError, match=rf"^{tmp_path / 'lcz.png'}: quicklook cannot be written \(no space left on the device\)$"):
        quicklook(lcz[:10, :10], (transform, crs), tmp, fmt="png", dpi=50)


def test_a_large_map_is_drawn_decimated(truth):
    import matplotlib.pyplot as plt

    lcz, transform, crs = truth
    big = np.tile(lcz, (1, 250))[:, :7000]
    fig = quicklook_figure(big, (transform, crs), dpi=50)
    image = fig.axes[0].get_images()[0].get_array()
    assert big.shape[1] == 7000 and image.shape[1] == 2334
    caption = gid_artists(fig.axes[0], "caption")[0].get_text().replace("\n", " ")
    assert "drawn at 1/3 resolution" in caption
    plt.close(fig)


@pytest.mark.parametrize("shape", [(20, 200), (200, 20), (30, 30)], ids=["wide", "tall", "square"])
def test_nothing_overlaps_whatever_the_map_shape(shape):
    """Title, frame, legend, caption and credits stack without touching; the north arrow and scale bar stay inside
    the frame and apart; the lon/lat labels keep clear of each other."""
    import matplotlib.pyplot as plt

    fig = quicklook_figure(every_class(shape), (from_origin(500_000, 4_000_000, 100, 100), "EPSG:32633"),
                           city="A city with a rather long name", dates=["2024-06-01"], model="m",
                           credits=credits_for(["sentinel2", "osm"]), dpi=100)
    renderer = drawn(fig)
    ax = fig.axes[0]
    frame = ax.get_window_extent(renderer)
    blocks = {"frame": frame, "legend": ax.get_legend().get_window_extent(renderer)}
    for gid in ("title", "caption", "credits"):
        (artist,) = gid_artists(ax, gid)
        blocks[gid] = artist.get_window_extent(renderer)
    names = sorted(blocks)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not blocks[a].overlaps(blocks[b]), (a, b)
    inside = {gid: [a.get_window_extent(renderer) for a in gid_artists(ax, gid)] for gid in ("scale_bar", "north_arrow")}
    for gid, boxes in inside.items():
        for box in boxes:
            assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, (gid, shape)
    assert not any(p.overlaps(q) for p in inside["scale_bar"] for q in inside["north_arrow"])
    labels = [t.get_window_extent(renderer) for t in gid_artists(ax, "scale_bar") if isinstance(t, Text)]
    assert not any(p.overlaps(q) for k, p in enumerate(labels) for q in labels[k + 1:])
    for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):
        extents = [t.get_window_extent(renderer) for t in ticks if t.get_text()]
        assert extents
        assert not any(p.overlaps(q) for k, p in enumerate(extents) for q in extents[k + 1:])
    plt.close(fig)
