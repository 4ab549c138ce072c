"""GLUE metrics against values worked out by hand."""

import math

import pytest

from src.tasks import glue_metrics as metrics


def test_accuracy_counts_matches():
    assert metrics.accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5


def test_f1_is_binary_f1_of_the_positive_class():
    # tp=2 (idx 0,2), fp=1 (idx 3), fn=1 (idx 1): P=2/3, R=2/3 -> F1=2/3
    assert metrics.f1([1, 0, 1, 1, 0], [1, 1, 1, 0, 0]) == pytest.approx(2 / 3)


def test_matthews_by_hand():
    # tp=2, tn=1, fp=1, fn=1: (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6
    assert metrics.matthews([1, 0, 1, 1, 0], [1, 1, 1, 0, 0]) == pytest.approx(1 / 6)
    assert metrics.matthews([0, 0, 0], [1, 0, 1]) == 0.0  # constant predictions score 0, as sklearn defines


def test_pearson_and_spearman_by_hand():
    preds, labels = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]
    # centred: p = (-1.5,-.5,.5,1.5), l = (-1.5,.5,-.5,1.5); cov = 2.25-.25-.25+2.25 = 4; var = 5 each
    assert metrics.pearson(preds, labels) == pytest.approx(0.8)
    # ranks equal the values here, so Spearman = Pearson of the ranks = 0.8
    assert metrics.spearman(preds, labels) == pytest.approx(0.8)
    assert metrics.spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)
    assert metrics.pearson([1, 2, 3, 4], [10, 20, 30, 1000]) < 0.9
    assert metrics.pearson_spearman_mean(preds, labels) == pytest.approx(0.8)


def test_compute_rejects_unknown_metric_names():
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.compute(["accuracy", "bleu"], [1], [1])
    out = metrics.compute(["accuracy", "f1"], [1, 0], [1, 1])
    assert out["accuracy"] == 0.5 and math.isclose(out["f1"], 2 / 3)
