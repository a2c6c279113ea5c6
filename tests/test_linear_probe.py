"""Linear probe: agreement with scikit-learn, hold-out carved from train only, hand cases, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from lastvit_eval.errors import InputError
from lastvit_eval.evaluators import get, linear_probe


def _blobs(n_train=1500, n_test=3000, d=16, c=5, scale=0.9, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=scale, size=(c, d))
    ytr, yte = rng.integers(0, c, n_train), rng.integers(0, c, n_test)
    xtr = (means[ytr] + rng.normal(size=(n_train, d)) * 1.5 + 3.0).astype(np.float32)
    xte = (means[yte] + rng.normal(size=(n_test, d)) * 1.5 + 3.0).astype(np.float32)
    return xtr, ytr, xte, yte


def _sklearn_top1(xtr, ytr, xte, yte, C=1.0):
    sc = StandardScaler().fit(xtr)
    clf = LogisticRegression(C=C, max_iter=2000).fit(sc.transform(xtr), ytr)
    return 100.0 * float((clf.predict(sc.transform(xte)) == yte).mean()), clf.predict(sc.transform(xte))


def test_registered():
    assert get("linear_probe").fn is linear_probe.evaluate


def test_same_objective_as_sklearn():
    """One config with wd = 1/(C n) solves sklearn's problem: accuracy within 1 point, same predictions."""
    xtr, ytr, xte, yte = _blobs()
    sk_acc, sk_pred = _sklearn_top1(xtr, ytr, xte, yte, C=1.0)
    assert 40 < sk_acc < 95  # neither trivial nor hopeless
    res = linear_probe.evaluate(xtr, ytr, xte, yte, lrs=(1e-2,), weight_decays=(1.0 / len(ytr),),
                                epochs=30, batch_size=256, device="cpu")
    assert abs(res.metrics["linear_probe.top1"].value - sk_acc) <= 1.0
    assert (res.rows["pred"].to_numpy() == sk_pred).mean() >= 0.93  # few-epoch Adam vs exact lbfgs


def test_grid_selection_matches_sklearn_accuracy():
    xtr, ytr, xte, yte = _blobs(seed=1)
    sk_acc, _ = _sklearn_top1(xtr, ytr, xte, yte)
    res = linear_probe.evaluate(xtr, ytr, xte, yte, lrs=(3e-3, 1e-2), weight_decays=(0.0, 1e-3, 1e-2),
                                epochs=40, batch_size=128, device="cpu")
    assert abs(res.metrics["linear_probe.top1"].value - sk_acc) <= 1.0
    info = res.info
    assert info["n_candidates"] == 6 and len(res.tables["selection"]) == 6
    best = res.tables["selection"]["holdout_top1"].idxmax()
    assert (info["chosen_lr"], info["chosen_weight_decay"]) == tuple(
        res.tables["selection"].loc[best, ["lr", "weight_decay"]]
    )
    m = res.metrics["linear_probe.mean_per_class_recall"]
    assert m.ci_low <= m.value <= m.ci_high
    assert {"linear_probe.top1", "linear_probe.top5"} <= set(res.metrics)


def test_holdout_is_carved_from_train_only(monkeypatch):
    """Spy on every feature array the heads see: test features appear only in the final scoring call."""
    xtr, ytr, xte, yte = _blobs(n_train=400, n_test=200)
    # Adversarial test labels: if selection ever looked at test, it would be scoring against noise.
    yte = np.random.default_rng(5).permutation(yte)
    test_rows = {tuple(r) for r in np.round(xte, 5)}
    train_rows = {tuple(r) for r in np.round(xtr, 5)}
    seen = []
    real_fit, real_logits = linear_probe.fit_heads, linear_probe.Heads.logits

    def spy_fit(x, y, *a, **k):
        seen.append(("fit", x.numpy().copy()))
        return real_fit(x, y, *a, **k)

    def spy_logits(self, x, *a, **k):
        seen.append(("logits", x.numpy().copy()))
        return real_logits(self, x, *a, **k)

    monkeypatch.setattr(linear_probe, "fit_heads", spy_fit)
    monkeypatch.setattr(linear_probe.Heads, "logits", spy_logits)
    res = linear_probe.evaluate(xtr, ytr, xte, yte, lrs=(1e-2,), weight_decays=(0.0, 1e-2), epochs=3,
                                holdout_fraction=0.2, device="cpu")
    kinds = [k for k, _ in seen]
    assert kinds == ["fit", "logits", "fit", "logits"]  # select (fit + hold-out), refit, test scoring
    for _, x in seen[:3]:
        rows = {tuple(r) for r in np.round(x, 5)}
        assert rows <= train_rows and not rows & test_rows
    sel_fit, hold = seen[0][1], seen[1][1]
    assert len(sel_fit) + len(hold) == len(xtr)
    assert len(seen[2][1]) == len(xtr)  # refit on the whole training split
    np.testing.assert_array_equal(seen[3][1], xte)
    assert res.info["holdout_fraction"] == 0.2


def test_stratified_holdout():
    y = np.repeat(np.arange(4), [10, 20, 1, 7])
    m = linear_probe.stratified_holdout(y, 0.2, seed=3)
    assert [int(m[y == c].sum()) for c in range(4)] == [2, 4, 0, 1]
    np.testing.assert_array_equal(m, linear_probe.stratified_holdout(y, 0.2, seed=3))
    assert not np.array_equal(m, linear_probe.stratified_holdout(y, 0.2, seed=4))


def test_separable_hand_case():
    xtr = np.array([[-2.0, 0.0], [-1.0, 0.5], [-1.5, -0.5], [1.0, 0.0], [2.0, 0.5], [1.5, -0.5]] * 5)
    ytr = np.array([0, 0, 0, 1, 1, 1] * 5)
    xte = np.array([[-3.0, 1.0], [3.0, -1.0], [-0.5, 0.0], [0.5, 0.0]])
    yte = np.array([0, 1, 0, 1])
    res = linear_probe.evaluate(xtr, ytr, xte, yte, lrs=(0.05,), weight_decays=(0.0,), epochs=50,
                                batch_size=8, device="cpu", test_ids=list("abcd"))
    assert res.metrics["linear_probe.top1"].value == 100.0
    assert list(res.rows["image_id"]) == list("abcd")
    assert res.metrics["linear_probe.top5"].value == 100.0  # 2 classes: top-5 covers all


def test_constant_feature_and_torch_input():
    xtr, ytr, xte, yte = _blobs(n_train=300, n_test=100)
    xtr[:, 0] = 7.0
    xte[:, 0] = 7.0
    res = linear_probe.evaluate(torch.from_numpy(xtr), torch.from_numpy(ytr), xte, yte, epochs=2, device="cpu")
    assert np.isfinite(res.metrics["linear_probe.top1"].value)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"holdout_fraction": 0.0}, "holdout_fraction"),
        ({"lrs": ()}, "empty hyperparameter grid"),
        ({"weight_decays": (-1.0,)}, "weight decays"),
        ({"epochs": 0}, "epochs"),
        ({"num_classes": 3}, "out of range"),
    ],
)
def test_bad_options(kw, match):
    xtr, ytr, xte, yte = _blobs(n_train=50, n_test=10)
    with pytest.raises(InputError, match=match):
        linear_probe.evaluate(xtr, ytr, xte, yte, device="cpu", **kw)


def test_bad_arrays():
    xtr, ytr, xte, yte = _blobs(n_train=50, n_test=10)
    with pytest.raises(InputError, match="width mismatch"):
        linear_probe.evaluate(xtr, ytr, xte[:, :3], yte, device="cpu")
    with pytest.raises(InputError, match="outside the 5 training classes"):
        linear_probe.evaluate(xtr, ytr, xte, np.full(10, 9), device="cpu")
    bad = xtr.copy()
    bad[3, 2] = np.inf
    with pytest.raises(InputError, match="row 3"):
        linear_probe.evaluate(bad, ytr, xte, yte, device="cpu")
