"""LCZ accuracy metrics against values computed by hand on a small confusion matrix."""

import json
import math

import numpy as np
import pytest

from lczmap import metrics


def hand_matrix() -> np.ndarray:
    """20 samples of classes 1, 2, 11 (A) and 15 (E); class 14 (D) only predicted, never a reference.

    reference 1 : 6 x 1, 1 x 2, 1 x 11      reference 11: 4 x 11, 1 x 14, 1 x 15
    reference 2 : 1 x 1, 3 x 2              reference 15: 1 x 15, 1 x 1
    """
    pairs = [(1, 1)] * 6 + [(1, 2), (1, 11)] + [(2, 1)] + [(2, 2)] * 3
    pairs += [(11, 11)] * 4 + [(11, 14), (11, 15)] + [(15, 15), (15, 1)]
    ref, pred = zip(*pairs, strict=True)
    return metrics.confusion_matrix(np.array(ref), np.array(pred))


def test_confusion_matrix_keeps_fixed_positions_and_skips_nodata():
    cm = metrics.confusion_matrix(np.array([3, 3, 17, 0, 5, 18]), np.array([3, 17, 17, 3, 0, 3]))
    assert cm.shape == (17, 17)
    assert cm[2, 2] == 1 and cm[2, 16] == 1 and cm[16, 16] == 1
    assert cm.sum() == 3  # pairs with 0 (nodata) or 18 are not samples


def test_matrices_of_splits_add_up():
    rng = np.random.default_rng(0)
    ref, pred = rng.integers(1, 18, 200), rng.integers(1, 18, 200)
    whole = metrics.confusion_matrix(ref, pred)
    parts = metrics.confusion_matrix(ref[:70], pred[:70]) + metrics.confusion_matrix(ref[70:], pred[70:])
    np.testing.assert_array_equal(whole, parts)


def test_hand_computed_scores():
    cm = hand_matrix()
    s = metrics.scores(cm)
    assert s["n"] == 20
    assert s["oa"] == pytest.approx(14 / 20)
    assert s["oa_u"] == pytest.approx(9 / 11)  # built block [[6, 1], [1, 3]]
    # built vs natural without LCZ E: BB 11, NN 5 (A->A 4, A->D 1), B->N 1, N->B 0
    assert s["oa_bu"] == pytest.approx(16 / 17)
    w = 6 + 0.92 + 0.33 + 0.92 + 3 + 4 + 0.67 + 0.42 + 1 + 0.25  # WUDAPT weights of the filled cells
    assert s["oa_w"] == pytest.approx(w / 20)
    assert s["oa_b"] == pytest.approx(9 / 12)
    assert s["oa_nb"] == pytest.approx(5 / 8)
    pe = (8 * 8 + 4 * 4 + 6 * 5 + 0 * 1 + 2 * 2) / 400
    assert s["kappa"] == pytest.approx((0.7 - pe) / (1 - pe))
    f1 = {1: 12 / 16, 2: 6 / 8, 11: 8 / 11, 15: 2 / 4}
    support = {1: 8, 2: 4, 11: 6, 15: 2}
    assert s["f1_weighted"] == pytest.approx(sum(f1[c] * support[c] for c in f1) / 20)


def test_per_class_and_absent_classes():
    pc = metrics.per_class(hand_matrix())
    assert pc[1] == pytest.approx({"pa": 6 / 8, "ua": 6 / 8, "f1": 0.75, "support": 8})
    assert pc[11]["pa"] == pytest.approx(4 / 6) and pc[11]["ua"] == pytest.approx(4 / 5)
    # D is predicted once but never a reference: PA undefined, UA and F1 zero
    assert math.isnan(pc[14]["pa"]) and pc[14]["ua"] == 0 and pc[14]["f1"] == 0
    # a class neither referenced nor predicted has no defined score
    assert all(math.isnan(pc[7][k]) for k in ("pa", "ua", "f1")) and pc[7]["support"] == 0


def test_undefined_metrics_are_null_in_json():
    cm = metrics.confusion_matrix(np.array([12, 13, 13]), np.array([12, 13, 12]))  # natural classes only
    s = metrics.scores(cm)
    assert s["oa_u"] is None and s["oa_b"] is None
    assert s["oa"] == pytest.approx(2 / 3) and s["oa_nb"] == pytest.approx(2 / 3)
    json.dumps(s, allow_nan=False)  # valid strict JSON
    empty = metrics.scores(np.zeros((17, 17)))
    assert empty["oa"] is None and empty["kappa"] is None and empty["f1_weighted"] is None


def test_perfect_map_scores_one():
    codes = np.arange(1, 18).repeat(3)
    s = metrics.scores(metrics.confusion_matrix(codes, codes))
    for key in metrics.SCALAR_METRICS:
        assert s[key] == pytest.approx(1.0), key


def test_wrong_shape_is_refused():
    with pytest.raises(ValueError):
        metrics.overall_accuracy(np.zeros((10, 10)))
