"""Zero-shot evaluator against scikit-learn, and feature files round-tripping."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, top_k_accuracy_score

from lastvit_eval.errors import InputError
from lastvit_eval.evaluators import get
from lastvit_eval.evaluators.zero_shot import evaluate
from lastvit_eval.features_io import FeatureSet, load_features, save_features


def _data(n=200, d=16, c=12, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, c))
    w /= np.linalg.norm(w, axis=0, keepdims=True)
    labels = rng.integers(0, c, size=n)
    emb = w[:, labels].T * 2 + rng.normal(size=(n, d)) * 1.5  # noisy: some right, some wrong
    return emb.astype(np.float32), labels, w.astype(np.float32)


def test_matches_sklearn():
    emb, labels, w = _data()
    names = [f"c{i}" for i in range(w.shape[1])]
    res = evaluate(emb, labels, w, names, [f"i{i}" for i in range(len(labels))])
    scores = (emb / np.linalg.norm(emb, axis=1, keepdims=True)) @ w
    assert res.metrics["zero_shot.top1"].value == pytest.approx(100 * (scores.argmax(1) == labels).mean())
    assert res.metrics["zero_shot.top5"].value == pytest.approx(
        100 * top_k_accuracy_score(labels, scores, k=5, labels=np.arange(w.shape[1])))
    assert res.metrics["zero_shot.mean_per_class_recall"].value == pytest.approx(
        100 * balanced_accuracy_score(labels, scores.argmax(1)))
    m = res.metrics["zero_shot.mean_per_class_recall"]
    assert m.ci_low <= m.value <= m.ci_high
    assert 0 < res.metrics["zero_shot.top1"].value < 100  # the data is neither trivial nor hopeless
    assert res.rows["top1"].mean() * 100 == pytest.approx(res.metrics["zero_shot.top1"].value)
    assert get("zero-shot").taps == {"embedding"}


def test_fewer_classes_than_top5():
    emb, labels, w = _data(c=3)
    res = evaluate(emb, labels, w, ["a", "b", "c"], [str(i) for i in range(len(labels))])
    assert "zero_shot.top3" in res.metrics and res.metrics["zero_shot.top3"].value == 100.0


def test_class_count_mismatch_and_bad_labels():
    emb, labels, w = _data()
    ids = [str(i) for i in range(len(labels))]
    with pytest.raises(InputError, match="11 class names for a classifier with 12 classes"):
        evaluate(emb, labels, w, [f"c{i}" for i in range(11)], ids)
    with pytest.raises(InputError, match="expected 16 x classes"):
        evaluate(emb, labels, w.T, [f"c{i}" for i in range(12)], ids)
    bad = labels.copy()
    bad[3] = 12
    with pytest.raises(InputError, match="label 12 is outside the 12 classes"):
        evaluate(emb, bad, w, [f"c{i}" for i in range(12)], ids)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_feature_files_round_trip(tmp_path, suffix):
    rng = np.random.default_rng(1)
    fs = FeatureSet(
        arrays={"pooled/cls": rng.normal(size=(4, 8)).astype(np.float32),
                "embedding/last-k1": rng.normal(size=(4, 3)).astype(np.float32),
                "patch_tokens": rng.normal(size=(4, 16, 8)).astype(np.float16)},
        labels=np.array([0, 2, -1, 1]), image_ids=["a", "b", "c", "d"], classes=["n1", "n2", "n3"],
        meta={"model": {"sha256": "x"}},
    )
    path = save_features(tmp_path / f"f{suffix}", fs)
    back = load_features(path)
    assert back.image_ids == fs.image_ids and back.classes == fs.classes and (back.labels == fs.labels).all()
    assert back.meta["model"] == {"sha256": "x"} and back.meta["format_version"] == 1
    for k, v in fs.arrays.items():
        assert back.arrays[k].dtype == v.dtype and (back.arrays[k] == v).all()
    with pytest.raises(InputError, match="no array 'pooled/gap'"):
        back.get("pooled/gap")


def test_bad_feature_files(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"junk")
    with pytest.raises(InputError, match="x.npz"):
        load_features(tmp_path / "x.npz")
    with pytest.raises(InputError, match="must end in"):
        load_features(tmp_path / "x.txt")
