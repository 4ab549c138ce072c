"""Official GLUE metrics as plain functions of predictions and references (no hub downloads)."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef


def accuracy(preds, labels) -> float:
    return float((np.asarray(preds) == np.asarray(labels)).mean())


def f1(preds, labels) -> float:
    """Binary F1 of the positive class (label 1), as GLUE scores MRPC and QQP."""
    return float(f1_score(labels, preds, pos_label=1, average="binary", zero_division=0))


def matthews(preds, labels) -> float:
    return float(matthews_corrcoef(labels, preds))


def pearson(preds, labels) -> float:
    return float(pearsonr(np.asarray(preds, dtype=float), np.asarray(labels, dtype=float))[0])


def spearman(preds, labels) -> float:
    return float(spearmanr(np.asarray(preds, dtype=float), np.asarray(labels, dtype=float))[0])


def pearson_spearman_mean(preds, labels) -> float:
    """AdaLoRA's STS-B column: the mean of both correlations."""
    return (pearson(preds, labels) + spearman(preds, labels)) / 2


METRICS = {f.__name__: f for f in (accuracy, f1, matthews, pearson, spearman, pearson_spearman_mean)}


def compute(names: list[str], preds, labels) -> dict[str, float]:
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {sorted(METRICS)}")
    return {name: METRICS[name](preds, labels) for name in names}
