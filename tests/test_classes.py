"""The LCZ class registry matches Stewart & Oke (2012) and the WUDAPT conventions."""

import numpy as np
import pytest
from click.testing import CliRunner

from lczmap.classes import colormap, lcz_class, lcz_classes, normalise_codes, oa_weights
from lczmap.cli import cli

WUDAPT = {1: "#8C0000", 2: "#D10000", 3: "#FF0000", 4: "#BF4D00", 5: "#FF6600", 6: "#FF9955", 7: "#FAEE05",
          8: "#BCBCBC", 9: "#FFCCAA", 10: "#555555", 11: "#006A00", 12: "#00AA00", 13: "#648525",
          14: "#B9DB79", 15: "#000000", 16: "#FBF7AE", 17: "#6A6AFF"}


def test_seventeen_classes_in_code_order():
    table = lcz_classes()
    assert [c.code for c in table] == list(range(1, 18))
    assert [c.lcz for c in table] == [str(i) for i in range(1, 11)] + list("ABCDEFG")
    assert [c.built for c in table] == [True] * 10 + [False] * 7


@pytest.mark.parametrize("code,colour", sorted(WUDAPT.items()))
def test_wudapt_colours(code, colour):
    assert lcz_class(code).colour == colour
    assert colormap()[code][:3] == tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))


def test_property_ranges_follow_stewart_oke():
    compact_high = lcz_class(1)
    assert (compact_high.building_fraction.min, compact_high.building_fraction.max) == (40, 60)
    assert compact_high.roughness_height.min == 25 and compact_high.roughness_height.max is None
    # Building fraction: the built classes are far denser than the natural ones.
    assert all(lcz_class(c).building_fraction.max <= 10 for c in range(11, 18))
    assert lcz_class(7).building_fraction.min > lcz_class(9).building_fraction.max


def test_geoclimate_codes_map_to_a_to_g():
    assert lcz_class(101).lcz == "A" and lcz_class(107).name == "Water"
    np.testing.assert_array_equal(normalise_codes(np.array([0, 5, 101, 107], np.uint8)), [0, 5, 11, 17])
    with pytest.raises(ValueError):
        lcz_class(18)


def test_oa_weights_symmetric_with_unit_diagonal():
    w = oa_weights()
    assert w.shape == (17, 17)
    np.testing.assert_array_equal(np.diag(w), 1.0)
    np.testing.assert_allclose(w, w.T)


def test_cli_classes_prints_colours():
    result = CliRunner().invoke(cli, ["classes"])
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 18
    assert "Compact high-rise" in lines[1] and "#8C0000" in lines[1]
    assert "G" in lines[-1] and "#6A6AFF" in lines[-1]
