"""Scores against scikit-learn's reference implementations."""
import numpy as np
import pytest
from sklearn import metrics as skm

from emojax import metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 7, size=300)
    # Predictions right about half the time, and one class never predicted or present.
    predictions = np.where(rng.random(300) < 0.5, labels, rng.integers(0, 7, size=300))
    labels[labels == 6] = 5
    scores = metrics.classification_scores(labels, predictions, 7)
    assert scores["accuracy"] == pytest.approx(skm.accuracy_score(labels, predictions))
    assert scores["weighted_f1"] == pytest.approx(
        skm.f1_score(labels, predictions, average="weighted", labels=range(7), zero_division=0))
    np.testing.assert_allclose(scores["per_class_f1"],
                               skm.f1_score(labels, predictions, average=None, labels=range(7), zero_division=0))
    np.testing.assert_array_equal(scores["confusion"], skm.confusion_matrix(labels, predictions, labels=range(7)))
    np.testing.assert_allclose(scores["per_class_accuracy"][:6],
                               skm.recall_score(labels, predictions, average=None, labels=range(6), zero_division=0))


def test_confusion_png_and_tables(tmp_path):
    names = ["neutral", "joy", "anger"]
    scores = metrics.classification_scores([0, 1, 2, 2, 1], [0, 1, 1, 2, 1], 3)
    path = metrics.plot_confusion(scores["confusion"], names, tmp_path / "cm.png", title="dev")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = metrics.format_table(scores, names)
    assert "| anger | 50.00 | 66.67 | 2 |" in table
    assert "| **all** | **80.00** |" in table
    confusion = metrics.format_confusion(scores["confusion"], names)
    assert "| anger | 0 | 1 | 1 |" in confusion
