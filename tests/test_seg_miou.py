"""mIoU / pixel accuracy against a brute-force per-class pixel count, and against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion

from lastvit_eval.segmentation.miou import SegScores, confusion_matrix, scores_result

C, IGNORE = 6, 255


def _data(seed: int = 0, n: int = 7):
    """Images of different sizes; class 5 never appears anywhere, class 4 only in predictions,
    class 3 only in ground truth; about 10% ignore pixels, some predicted as real classes."""
    rng = np.random.default_rng(seed)
    preds, labels = [], []
    for k in range(n):
        h, w = rng.integers(5, 30, 2)
        lab = rng.choice([0, 1, 2, 3], size=(h, w), p=[0.4, 0.3, 0.2, 0.1])
        pred = np.where(rng.random((h, w)) < 0.6, lab, rng.choice([0, 1, 2, 4], size=(h, w)))
        pred[pred == 3] = 2  # the model never predicts class 3
        lab[rng.random((h, w)) < 0.1] = IGNORE
        if k == 0:
            lab[:] = IGNORE  # an image with no labelled pixel
        preds.append(pred)
        labels.append(lab)
    return preds, labels


def _brute_force(preds, labels):
    inter, union = np.zeros(C), np.zeros(C)
    correct = labelled = 0
    for pred, lab in zip(preds, labels, strict=True):
        valid = lab != IGNORE
        for c in range(C):
            inter[c] += np.sum((pred == c) & (lab == c) & valid)
            union[c] += np.sum(((pred == c) | (lab == c)) & valid)
        correct += np.sum((pred == lab) & valid)
        labelled += np.sum(valid)
    ious = [100 * inter[c] / union[c] for c in range(C) if union[c] > 0]
    return sum(ious) / len(ious), 100 * correct / labelled, inter, union


def _scores(preds, labels) -> SegScores:
    s = SegScores(C, IGNORE)
    for p, lab in zip(preds, labels, strict=True):
        s.update(torch.from_numpy(p), torch.from_numpy(lab))
    return s


def test_matches_brute_force_with_ignore_and_absent_classes():
    preds, labels = _data()
    s = _scores(preds, labels)
    miou, acc, inter, union = _brute_force(preds, labels)
    assert s.miou() == pytest.approx(miou, abs=1e-9)
    assert s.pixel_accuracy() == pytest.approx(acc, abs=1e-9)
    iou = s.per_class_iou()
    assert np.isnan(iou[5])  # never in labels or predictions: not averaged
    assert iou[3] == 0 and iou[4] == 0  # only in labels / only in predictions: counted as 0
    np.testing.assert_allclose(iou[:5], 100 * inter[:5] / union[:5])
    # per-image areas add up to the accumulated ones
    np.testing.assert_array_equal(np.stack(s.intersections).sum(0), inter)
    np.testing.assert_array_equal(np.stack(s.unions).sum(0), union)


def test_confusion_matrix_matches_sklearn():
    preds, labels = _data(seed=3)
    s = _scores(preds, labels)
    keep = [lab != IGNORE for lab in labels]
    ref = sk_confusion(np.concatenate([lab[k] for lab, k in zip(labels, keep, strict=True)]),
                       np.concatenate([p[k] for p, k in zip(preds, keep, strict=True)]), labels=list(range(C)))
    np.testing.assert_array_equal(s.confusion.numpy(), ref)


def test_perfect_prediction_scores_100():
    _, labels = _data(seed=1)
    preds = [np.where(lab == IGNORE, 0, lab) for lab in labels]
    s = _scores(preds, labels)
    assert s.miou() == 100.0 and s.pixel_accuracy() == 100.0
    per = s.per_image()
    assert np.isnan(per["miou"][0]) and np.all(per["miou"][1:] == 100.0)


def test_per_image_rows_match_brute_force():
    preds, labels = _data(seed=2)
    per = _scores(preds, labels).per_image()
    for k in range(1, len(preds)):
        miou, acc, _, _ = _brute_force([preds[k]], [labels[k]])
        assert per["miou"][k] == pytest.approx(miou) and per["pixel_accuracy"][k] == pytest.approx(acc)
    assert np.isnan(per["pixel_accuracy"][0]) and per["labelled_pixels"][0] == 0


def test_bootstrap_interval_over_images():
    preds, labels = _data(seed=4, n=30)
    s = _scores(preds, labels)
    m = s.miou_metric(n_resamples=200, seed=0)
    assert m.value == pytest.approx(s.miou()) and m.n == 30 and m.unit == "percent"
    assert m.ci_low < m.value < m.ci_high
    assert m.ci_low == s.miou_metric(n_resamples=200, seed=0).ci_low  # seeded
    a = s.pixel_accuracy_metric(n_resamples=200)
    assert a.value == pytest.approx(s.pixel_accuracy()) and a.ci_low < a.value < a.ci_high


def test_bad_inputs():
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(torch.zeros(2, 3), torch.zeros(3, 2), C)
    with pytest.raises(ValueError, match="label values outside"):
        confusion_matrix(torch.zeros(2), torch.tensor([0, 9]), C)
    with pytest.raises(ValueError, match="predicted class ids outside"):
        confusion_matrix(torch.tensor([0, 6]), torch.tensor([0, 1]), C)
    with pytest.raises(ValueError, match="no images"):
        SegScores(C).miou_metric()


def test_result_tables_and_rows():
    preds, labels = _data(seed=5, n=6)
    s = _scores(preds, labels)
    ids = [f"img{k}" for k in range(6)]
    r = scores_result(s, [f"c{c}" for c in range(C)], ids, namespace="zero_shot_seg.voc20", n_resamples=100)
    miou, acc, inter, union = _brute_force(preds, labels)
    assert r.metrics["zero_shot_seg.voc20.miou"].value == pytest.approx(miou)
    assert r.metrics["zero_shot_seg.voc20.pixel_acc"].value == pytest.approx(acc)
    table = r.tables["per_class"]
    np.testing.assert_array_equal(table["intersection"], inter)
    np.testing.assert_array_equal(table["union"], union)
    assert r.info["classes_averaged"] == 5 and list(r.rows["image_id"]) == ids
    with pytest.raises(ValueError, match="class names"):
        scores_result(s, ["a"], ids)
