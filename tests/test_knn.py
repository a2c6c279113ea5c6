"""k-NN: hand-computed votes, brute force over all pairs, chunking invariance, bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lastvit_eval.errors import InputError
from lastvit_eval.evaluators import get, knn


def _hand_set():
    # Unit-circle points (already normalized): angles in degrees, labels.
    train_deg = np.array([0.0, 10.0, 20.0, 90.0, 180.0])
    train_y = np.array([0, 0, 1, 2, 3])
    test_deg = np.array([5.0, 95.0])
    test_y = np.array([1, 3])
    to_xy = lambda d: np.stack([np.cos(np.radians(d)), np.sin(np.radians(d))], 1).astype(np.float32)  # noqa: E731
    return to_xy(train_deg), train_y, to_xy(test_deg), test_y, train_deg, test_deg


def test_registered():
    c = get("knn")
    assert c is knn.Knn and c.taps == {"pooled"} and c.splits == ("train", "test")


def test_hand_computed_votes_and_k_below_five():
    xtr, ytr, xte, yte, dtr, dte = _hand_set()
    res = knn.evaluate(xtr, ytr, xte, yte, ks=(1, 3), temperature=0.5, device="cpu")
    rows = res.rows.set_index("image_id")
    # Test 0 at 5 deg: neighbours 0 deg (y0) and 10 deg (y0) tie at cos 5 deg, then 20 deg (y1).
    # k=1 -> class 0 predicted, label 1 -> miss; top-5 with k=1: only class 0 has votes -> miss,
    # even though 4 classes (incl. the label) would fill a naive top-5 by zero-vote tie order.
    assert rows.loc[0, "k1.pred"] == 0
    assert not rows.loc[0, "k1.top1"] and not rows.loc[0, "k1.top5"]
    # k=3: votes class 0 = 2 exp(cos5/T), class 1 = exp(cos15/T) -> pred 0, label 1 in top-5 (nonzero).
    assert rows.loc[0, "k3.pred"] == 0 and rows.loc[0, "k3.top5"] and not rows.loc[0, "k3.top1"]
    # Test 1 at 95 deg: sims 90 deg -> cos5, 20 deg -> cos75, 10 deg -> cos85, 180 deg -> cos85, 0 -> cos95.
    # k=1: class 2. k=3: class 2 (cos5) + class 1 (cos75) + one of the cos85 ties -> label 3 maybe.
    assert rows.loc[1, "k1.pred"] == 2 and not rows.loc[1, "k1.top5"]
    v2 = math.exp(math.cos(math.radians(5)) / 0.5)
    v1 = math.exp(math.cos(math.radians(75)) / 0.5)
    assert v2 > v1  # the prediction does not depend on how the cos85 tie is broken
    assert rows.loc[1, "k3.pred"] == 2
    assert res.metrics["knn.k1.top1"].value == 0.0
    assert res.metrics["knn.k3.top5"].n == 2


def test_vote_weights_literal():
    sims = torch.tensor([[0.9, 0.5, 0.4]])
    nb = torch.tensor([[1, 0, 0]])
    # class 0: e^(5) + e^(4) = 203.0 > class 1: e^(9)?  no: e^9 = 8103 -> class 1 wins at T=0.1
    pred, top1, top5 = knn.vote(sims, nb, torch.tensor([0]), 2, 0.1)
    assert pred.item() == 1 and not top1.item() and top5.item()
    # With a large T the weights flatten and two neighbours beat one: class 0.
    pred, top1, _ = knn.vote(sims, nb, torch.tensor([0]), 2, 100.0)
    assert pred.item() == 0 and top1.item()


def _brute_force(xtr, ytr, xte, k, T, C):
    """Double loop over all pairs in float64: cosine, sort, weighted vote, then rank classes."""
    preds, top5 = [], []
    for q in xte:
        sims = []
        for j, t in enumerate(xtr):
            sims.append((float(np.dot(q, t) / (np.linalg.norm(q) * np.linalg.norm(t))), j))
        sims.sort(key=lambda s: -s[0])
        votes = np.zeros(C)
        for s, j in sims[:k]:
            votes[ytr[j]] += math.exp(s / T)
        ranked = sorted(range(C), key=lambda c: (-votes[c], c))
        preds.append(ranked[0])
        top5.append([c for c in ranked[:5] if votes[c] > 0])
    return np.array(preds), top5


@pytest.mark.parametrize("k", [1, 3, 7, 25])
def test_matches_brute_force(k):
    rng = np.random.default_rng(k)
    C = 6
    means = rng.normal(size=(C, 8))
    ytr = rng.integers(0, C, 120)
    yte = rng.integers(0, C, 30)
    xtr = (means[ytr] + rng.normal(size=(120, 8))).astype(np.float32)
    xte = (means[yte] + rng.normal(size=(30, 8))).astype(np.float32)
    res = knn.evaluate(xtr, ytr, xte, yte, ks=(k,), device="cpu", train_chunk=17, test_chunk=7)
    bf_pred, bf_top5 = _brute_force(xtr.astype(np.float64), ytr, xte.astype(np.float64), k, 0.07, C)
    np.testing.assert_array_equal(res.rows[f"k{k}.pred"].to_numpy(), bf_pred)
    np.testing.assert_array_equal(res.rows[f"k{k}.top1"].to_numpy(), bf_pred == yte)
    expected_top5 = [y in t for y, t in zip(yte, bf_top5, strict=True)]
    np.testing.assert_array_equal(res.rows[f"k{k}.top5"].to_numpy(), expected_top5)


def test_chunked_equals_unchunked_and_neighbours_exact():
    rng = np.random.default_rng(0)
    xtr = rng.normal(size=(500, 16)).astype(np.float32)
    xte = rng.normal(size=(40, 16)).astype(np.float32)
    ytr = rng.integers(0, 10, 500)
    yte = rng.integers(0, 10, 40)
    a = knn.evaluate(xtr, ytr, xte, yte, ks=(5, 20, 50), device="cpu", train_chunk=10_000, test_chunk=10_000)
    b = knn.evaluate(xtr, ytr, xte, yte, ks=(5, 20, 50), device="cpu", train_chunk=13, test_chunk=3)
    assert a.rows.equals(b.rows)
    # Neighbour sets equal to a full sort of the float64 cosine matrix.
    s, i = knn.topk_neighbours(torch.from_numpy(xtr), torch.from_numpy(xte), 20, train_chunk=7, test_chunk=5)
    n = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    full = n(xte.astype(np.float64)) @ n(xtr.astype(np.float64)).T
    np.testing.assert_array_equal(i.numpy(), np.argsort(-full, axis=1, kind="stable")[:, :20])
    np.testing.assert_allclose(s.numpy(), np.sort(full, axis=1)[:, ::-1][:, :20], atol=1e-5)


def test_k_clamped_to_bank_and_classes_from_train():
    xtr, ytr, xte, yte, *_ = _hand_set()
    res = knn.evaluate(xtr, ytr, xte, yte, ks=(2, 200), device="cpu")
    assert res.info["effective_k"] == {"2": 2, "200": 5}
    assert res.info["k_clamped"] == [200]
    assert res.info["num_classes"] == 4
    assert {"knn.k2.top1", "knn.k2.top5", "knn.k200.top1", "knn.k200.top5"} <= set(res.metrics)
    assert list(res.rows.columns[:2]) == ["image_id", "label"]


def test_empty_train_class_reported():
    xtr, ytr, xte, yte, *_ = _hand_set()
    res = knn.evaluate(xtr, ytr, xte, yte, ks=(1,), num_classes=6, device="cpu")
    assert res.info["empty_train_classes"] == [4, 5]


def test_torch_and_half_inputs_and_ids():
    xtr, ytr, xte, yte, *_ = _hand_set()
    res = knn.evaluate(torch.from_numpy(xtr).half(), torch.from_numpy(ytr), xte, yte, ks=(1,),
                       test_ids=["a", "b"], device="cpu")
    assert list(res.rows["image_id"]) == ["a", "b"]


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda a: {**a, "test_feats": a["test_feats"][:, :1]}, "width mismatch"),
        (lambda a: {**a, "test_labels": np.array([1, 7])}, "outside the 4 training classes"),
        (lambda a: {**a, "train_labels": np.array([0, 0, -1, 2, 3])}, "negative label"),
        (lambda a: {**a, "train_labels": np.array([0, 0, 1, 2])}, "4 labels for 5"),
        (lambda a: {**a, "train_labels": np.array([0, 0, 1.5, 2, 3])}, "integers"),
        (lambda a: {**a, "train_feats": np.where(np.eye(5, 2) > 0, np.nan, a["train_feats"])}, "non-finite"),
        (lambda a: {**a, "test_feats": np.zeros((0, 2), np.float32), "test_labels": np.zeros(0)}, "empty"),
        (lambda a: {**a, "train_feats": a["train_feats"][0]}, "2-D"),
        (lambda a: {**a, "ks": (0,)}, "ks must be"),
        (lambda a: {**a, "temperature": 0.0}, "temperature"),
        (lambda a: {**a, "num_classes": 2}, "out of range"),
    ],
)
def test_bad_inputs_raise_input_error(mutate, match):
    xtr, ytr, xte, yte, *_ = _hand_set()
    args = mutate({"train_feats": xtr, "train_labels": ytr, "test_feats": xte, "test_labels": yte, "ks": (1,),
                   "temperature": 0.07, "num_classes": None})
    with pytest.raises(InputError, match=match):
        knn.evaluate(args.pop("train_feats"), args.pop("train_labels"), args.pop("test_feats"),
                     args.pop("test_labels"), device="cpu", **args)
