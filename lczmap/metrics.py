"""LCZ accuracy metrics from a fixed 17-class confusion matrix (WUDAPT OA family, MSMLA/DF4LCZ variants, kappa, F1).

The confusion matrix has rows = reference class, columns = predicted class, both in code order 1..17;
classes absent from a split keep their (zero) row and column, so matrices from different splits add up.
A metric whose denominator is zero (e.g. OA_u with no built samples) is NaN, written as null in JSON.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .classes import BUILT_CODES, CODES, N_CLASSES, NATURAL_CODES, oa_weights

_BUILT = np.array(BUILT_CODES) - 1
_NATURAL = np.array(NATURAL_CODES) - 1
# WUDAPT's built-vs-natural OA drops LCZ E (15, bare rock or paved): it can be either.
_NATURAL_NO_E = np.array([c for c in NATURAL_CODES if c != 15]) - 1

# The names under which the scores appear in papers, for the docs and the report.
METRIC_NAMES: dict[str, str] = {
    "oa": "OA: overall accuracy",
    "oa_u": "OA_u: accuracy within the built classes 1-10 (10x10 block)",
    "oa_bu": "OA_bu: built (1-10) vs natural (A-D, F, G) binary accuracy, LCZ E excluded",
    "oa_w": "OA_w (WA): WUDAPT similarity-weighted accuracy",
    "oa_b": "OA_b: accuracy of the built reference samples (rows 1-10; MSMLA's OA_BU, DF4LCZ's OA_B)",
    "oa_nb": "OA_nb: accuracy of the natural reference samples (rows 11-17; MSMLA's OA_N, DF4LCZ's OA_NB)",
    "kappa": "Cohen's kappa",
    "f1_weighted": "F1 averaged over classes weighted by reference support (sklearn average='weighted')",
}


def confusion_matrix(reference: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """17x17 int64 counts of (reference, predicted) code pairs; pairs with a code outside 1..17 are skipped."""
    ref = np.asarray(reference).ravel().astype(np.int64)
    pred = np.asarray(predicted).ravel().astype(np.int64)
    if ref.shape != pred.shape:
        raise ValueError(f"reference has {ref.size} values, predicted {pred.size}")
    ok = (ref >= 1) & (ref <= N_CLASSES) & (pred >= 1) & (pred <= N_CLASSES)
    flat = (ref[ok] - 1) * N_CLASSES + (pred[ok] - 1)
    return np.bincount(flat, minlength=N_CLASSES * N_CLASSES).reshape(N_CLASSES, N_CLASSES)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else math.nan


def _check(cm: np.ndarray) -> np.ndarray:
    cm = np.asarray(cm, dtype=np.float64)
    if cm.shape != (N_CLASSES, N_CLASSES):
        raise ValueError(f"confusion matrix must be {N_CLASSES}x{N_CLASSES}, got {cm.shape}")
    return cm


def overall_accuracy(cm: np.ndarray) -> float:
    """OA = trace / total."""
    cm = _check(cm)
    return _ratio(np.trace(cm), cm.sum())


def oa_urban(cm: np.ndarray) -> float:
    """OA_u: trace / total of the built-by-built 10x10 block."""
    block = _check(cm)[np.ix_(_BUILT, _BUILT)]
    return _ratio(np.trace(block), block.sum())


def oa_built_natural(cm: np.ndarray) -> float:
    """OA_bu: accuracy of the binary built (1-10) vs natural (11-14, 16, 17) problem; class 15 rows and columns dropped."""
    cm = _check(cm)
    bb = cm[np.ix_(_BUILT, _BUILT)].sum()
    nn = cm[np.ix_(_NATURAL_NO_E, _NATURAL_NO_E)].sum()
    bn = cm[np.ix_(_BUILT, _NATURAL_NO_E)].sum()
    nb = cm[np.ix_(_NATURAL_NO_E, _BUILT)].sum()
    return _ratio(bb + nn, bb + nn + bn + nb)


def oa_weighted(cm: np.ndarray) -> float:
    """OA_w: sum(W * CM) / sum(CM) with the WUDAPT weight matrix."""
    cm = _check(cm)
    return _ratio((oa_weights() * cm).sum(), cm.sum())


def oa_rows(cm: np.ndarray, codes: tuple[int, ...]) -> float:
    """Accuracy of the samples whose reference is one of `codes` (correct / row totals)."""
    rows = np.array(codes) - 1
    cm = _check(cm)
    return _ratio(cm[rows, rows].sum(), cm[rows].sum())


def kappa(cm: np.ndarray) -> float:
    """Cohen's kappa: (p_o - p_e) / (1 - p_e)."""
    cm = _check(cm)
    n = cm.sum()
    if not n:
        return math.nan
    po = np.trace(cm) / n
    pe = float((cm.sum(axis=1) * cm.sum(axis=0)).sum()) / n**2
    return _ratio(po - pe, 1.0 - pe)


def per_class(cm: np.ndarray) -> dict[int, dict[str, float]]:
    """Per class: PA (producer's accuracy, recall), UA (user's accuracy, precision), F1, reference support."""
    cm = _check(cm)
    tp = np.diag(cm)
    rows, cols = cm.sum(axis=1), cm.sum(axis=0)
    out = {}
    for k, code in enumerate(CODES):
        # 2TP / (2TP + FP + FN) equals 2*PA*UA/(PA+UA) and is 0 (not undefined) when one of them is 0.
        out[code] = {
            "pa": _ratio(tp[k], rows[k]),
            "ua": _ratio(tp[k], cols[k]),
            "f1": _ratio(2 * tp[k], rows[k] + cols[k]),
            "support": int(rows[k]),
        }
    return out


def f1_weighted(cm: np.ndarray) -> float:
    """Support-weighted mean of per-class F1 (sklearn's average='weighted'; a never-correct class counts as 0)."""
    cm = _check(cm)
    rows, cols, tp = cm.sum(axis=1), cm.sum(axis=0), np.diag(cm)
    present = rows > 0
    if not present.any():
        return math.nan
    f1 = 2 * tp[present] / (rows[present] + cols[present])
    return float((f1 * rows[present]).sum() / rows[present].sum())


def scores(cm: np.ndarray) -> dict[str, Any]:
    """Every metric of a confusion matrix, JSON-ready (NaN as None)."""
    cm = _check(cm)
    out: dict[str, Any] = {
        "n": int(cm.sum()),
        "oa": overall_accuracy(cm),
        "oa_u": oa_urban(cm),
        "oa_bu": oa_built_natural(cm),
        "oa_w": oa_weighted(cm),
        "oa_b": oa_rows(cm, BUILT_CODES),
        "oa_nb": oa_rows(cm, NATURAL_CODES),
        "kappa": kappa(cm),
        "f1_weighted": f1_weighted(cm),
        "per_class": {str(c): v for c, v in per_class(cm).items()},
    }
    return json_safe(out)


SCALAR_METRICS: tuple[str, ...] = ("oa", "oa_u", "oa_bu", "oa_w", "oa_b", "oa_nb", "kappa", "f1_weighted")


def json_safe(value: Any) -> Any:
    """Replace NaN floats by None, recursively, and numpy scalars by Python ones (for json.dumps)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    return value
