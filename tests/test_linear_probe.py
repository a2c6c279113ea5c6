"""Linear probe: agreement with scikit-learn (both solvers), L-BFGS internals vs autograd and sklearn's
objective, hold-out carved from train only, hand cases, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from lastvit_eval.errors import InputError
from lastvit_eval.evaluators import get, linear_probe, logreg_lbfgs
from lastvit_eval.evaluators.standardize import Moments, Standardizer


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
    assert get("linear_probe") is get("linear-probe") is linear_probe.LinearProbe


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_same_objective_as_sklearn_lbfgs(precision):
    """One weight decay = 1/(C n) solves sklearn's problem: accuracy within 1 point, same predictions."""
    xtr, ytr, xte, yte = _blobs()
    sk_acc, sk_pred = _sklearn_top1(xtr, ytr, xte, yte, C=1.0)
    assert 40 < sk_acc < 95  # neither trivial nor hopeless
    res = linear_probe.evaluate(xtr, ytr, xte, yte, weight_decays=(1.0 / len(ytr),), tol=1e-6,
                                precision=precision, chunk=512, device="cpu")
    assert abs(res.metrics["linear_probe.top1"].value - sk_acc) <= 1.0
    assert (res.rows["pred"].to_numpy() == sk_pred).mean() >= 0.97  # both L-BFGS; bf16 rounding aside
    assert res.info["chosen_sklearn_C"] == pytest.approx(1.0)


def test_same_objective_as_sklearn_adam():
    xtr, ytr, xte, yte = _blobs()
    sk_acc, sk_pred = _sklearn_top1(xtr, ytr, xte, yte, C=1.0)
    res = linear_probe.evaluate(xtr, ytr, xte, yte, solver="adam", lrs=(1e-2,), weight_decays=(1.0 / len(ytr),),
                                epochs=30, batch_size=256, device="cpu")
    assert abs(res.metrics["linear_probe.top1"].value - sk_acc) <= 1.0
    assert (res.rows["pred"].to_numpy() == sk_pred).mean() >= 0.93  # few-epoch Adam vs exact lbfgs


def _penalized(xs, y, w, b, wd):
    """Mean cross-entropy + wd/2 ||W||^2, float64, literal formula (the reference objective)."""
    z = xs.double() @ w.double() + b.double()
    return float(torch.nn.functional.cross_entropy(z, y) + 0.5 * wd * (w.double() ** 2).sum())


def test_path_solutions_reach_sklearn_objective():
    """Each warm-started candidate on the path is as good a minimizer as sklearn's solution at C = 1/(wd n)."""
    xtr, ytr, _, _ = _blobs(seed=2)
    x, y = torch.from_numpy(xtr), torch.from_numpy(ytr)
    sc = Standardizer.fit(x)
    xs = sc(x, torch.device("cpu"))
    obj = logreg_lbfgs.Objective(x, y, 5, sc, dtype=torch.float32, device=torch.device("cpu"), chunk=256)
    wds = [1e-1, 1e-2, 1e-3, 1e-4]
    fits = logreg_lbfgs.lbfgs(obj, torch.zeros(16, 5), torch.zeros(5), wds, rtol=1e-7, max_iter=500)
    for f in fits:
        clf = LogisticRegression(C=1.0 / (f.weight_decay * len(y)), tol=1e-8, max_iter=5000).fit(xs.numpy(), ytr)
        ref = _penalized(xs, y, torch.from_numpy(clf.coef_.T.copy()), torch.from_numpy(clf.intercept_), f.weight_decay)
        ours = _penalized(xs, y, f.weight, f.bias, f.weight_decay)
        assert ours <= ref + 1e-6
        assert f.loss == pytest.approx(ours, abs=1e-5)


@pytest.mark.parametrize("at_zero", [False, True])
def test_objective_gradient_matches_autograd(at_zero):
    xtr, ytr, _, _ = _blobs(n_train=300, seed=3)
    x, y = torch.from_numpy(xtr), torch.from_numpy(ytr)
    sc = Standardizer.fit(x)
    obj = logreg_lbfgs.Objective(x, y, 5, sc, dtype=torch.float32, device=torch.device("cpu"), chunk=64)
    g = torch.Generator().manual_seed(0)
    w = torch.zeros(16, 5) if at_zero else torch.randn(16, 5, generator=g) * 0.3
    b = torch.randn(5, generator=g)
    loss, gw, gb = obj.data_term(w, b)
    wr, br = w.double().requires_grad_(), b.double().requires_grad_()
    ref = torch.nn.functional.cross_entropy(sc(x, torch.device("cpu")).double() @ wr + br, y)
    ref.backward()
    assert loss == pytest.approx(float(ref.detach()), abs=1e-5)
    torch.testing.assert_close(gw.double(), wr.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gb.double(), br.grad, atol=1e-5, rtol=1e-4)
    assert obj.passes == (0 if at_zero else 1)  # W = 0 is exact from class sums, no pass
    obj.data_term(w, b)
    assert obj.passes == (0 if at_zero else 1)  # memoized


def test_standardizer_carry_is_exact():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 6, generator=g) * 3 + 2
    a, c = Standardizer.fit(x[:120]), Standardizer.fit(x)
    w, b = torch.randn(6, 4, generator=g), torch.randn(4, generator=g)
    w2, b2 = a.carry(c, w, b)
    dev = torch.device("cpu")
    torch.testing.assert_close(c(x, dev) @ w2 + b2, a(x, dev) @ w + b, atol=1e-4, rtol=1e-5)
    rows = torch.tensor([5, 1, 7])
    torch.testing.assert_close(Standardizer.fit(x, rows).mean, Standardizer.fit(x[rows]).mean)


@pytest.mark.parametrize("solver", ["lbfgs", "adam"])
def test_grid_selection_matches_sklearn_accuracy(solver):
    xtr, ytr, xte, yte = _blobs(seed=1)
    sk_acc, _ = _sklearn_top1(xtr, ytr, xte, yte)
    kw = ({"lrs": (3e-3, 1e-2), "epochs": 40, "batch_size": 128} if solver == "adam" else {"chunk": 256})
    res = linear_probe.evaluate(xtr, ytr, xte, yte, solver=solver, weight_decays=(0.0, 1e-3, 1e-2),
                                device="cpu", **kw)
    assert abs(res.metrics["linear_probe.top1"].value - sk_acc) <= 1.0
    info = res.info
    n = 6 if solver == "adam" else 3
    assert info["n_candidates"] == n and len(res.tables["selection"]) == n
    best = res.tables["selection"]["holdout_top1"].idxmax()
    assert info["chosen_weight_decay"] == res.tables["selection"].loc[best, "weight_decay"]
    if solver == "adam":
        assert info["chosen_lr"] == res.tables["selection"].loc[best, "lr"]
    else:
        assert list(res.tables["selection"]["weight_decay"]) == [0.0, 1e-3, 1e-2]  # grid order kept
    m = res.metrics["linear_probe.mean_per_class_recall"]
    assert m.ci_low <= m.value <= m.ci_high
    assert {"linear_probe.top1", "linear_probe.top5"} <= set(res.metrics)


def test_holdout_is_carved_from_train_only_lbfgs(monkeypatch):
    """Spy on every feature array the solver reads (all are standardized through Standardizer.transform, or
    scored by LinearHead.logits): test features appear only in the final scoring call, and the refit's
    objective holds every training row once."""
    xtr, ytr, xte, yte = _blobs(n_train=400, n_test=200)
    yte = np.random.default_rng(5).permutation(yte)  # adversarial: selection on test would score noise
    test_rows = {tuple(r) for r in np.round(xte, 5)}
    train_rows = {tuple(r) for r in np.round(xtr, 5)}
    seen, extended = [], []
    real_transform, real_logits = Standardizer.transform, logreg_lbfgs.LinearHead.logits
    real_extend = logreg_lbfgs.Objective.extend

    def spy_transform(self, x, *a, rows=None, **k):
        seen.append(("standardize", (x if rows is None else x[rows]).numpy().copy()))
        return real_transform(self, x, *a, rows=rows, **k)

    def spy_logits(self, x, *a, **k):
        seen.append(("logits", x.numpy().copy()))
        return real_logits(self, x, *a, **k)

    def spy_extend(self, xs, y, *a, **k):
        real_extend(self, xs, y, *a, **k)
        extended.append(self.n)

    monkeypatch.setattr(Standardizer, "transform", spy_transform)
    monkeypatch.setattr(logreg_lbfgs.LinearHead, "logits", spy_logits)
    monkeypatch.setattr(logreg_lbfgs.Objective, "extend", spy_extend)
    res = linear_probe.evaluate(xtr, ytr, xte, yte, weight_decays=(0.0, 1e-2), holdout_fraction=0.2, device="cpu")
    kinds = [k for k, _ in seen]
    assert kinds == ["standardize", "standardize", "logits"]  # fit rows, hold-out rows, then test
    for _, x in seen[:2]:
        rows = {tuple(r) for r in np.round(x, 5)}
        assert rows <= train_rows and not rows & test_rows
    fit, hold = ({tuple(r) for r in np.round(x, 5)} for _, x in seen[:2])
    assert not fit & hold and len(seen[0][1]) + len(seen[1][1]) == len(xtr)
    assert len(seen[1][1]) == linear_probe.stratified_holdout(ytr, 0.2, 0).sum()  # floor(0.2 n_c) per class
    assert extended == [len(seen[0][1]), len(xtr)]  # the path's objective, then the refit's: the whole split
    np.testing.assert_array_equal(seen[2][1], xte)
    assert res.info["holdout_fraction"] == 0.2


def test_holdout_is_carved_from_train_only_adam(monkeypatch):
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
    res = linear_probe.evaluate(xtr, ytr, xte, yte, solver="adam", lrs=(1e-2,), weight_decays=(0.0, 1e-2),
                                epochs=3, holdout_fraction=0.2, device="cpu")
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


@pytest.mark.parametrize("solver", ["lbfgs", "adam"])
def test_separable_hand_case(solver):
    xtr = np.array([[-2.0, 0.0], [-1.0, 0.5], [-1.5, -0.5], [1.0, 0.0], [2.0, 0.5], [1.5, -0.5]] * 5)
    ytr = np.array([0, 0, 0, 1, 1, 1] * 5)
    xte = np.array([[-3.0, 1.0], [3.0, -1.0], [-0.5, 0.0], [0.5, 0.0]])
    yte = np.array([0, 1, 0, 1])
    kw = {"lrs": (0.05,), "epochs": 50, "batch_size": 8} if solver == "adam" else {}
    res = linear_probe.evaluate(xtr, ytr, xte, yte, solver=solver, weight_decays=(0.0,), device="cpu",
                                test_ids=list("abcd"), **kw)
    assert res.metrics["linear_probe.top1"].value == 100.0
    assert list(res.rows["image_id"]) == list("abcd")
    assert res.metrics["linear_probe.top5"].value == 100.0  # 2 classes: top-5 covers all


def test_constant_feature_and_torch_input():
    xtr, ytr, xte, yte = _blobs(n_train=300, n_test=100)
    xtr[:, 0] = 7.0
    xte[:, 0] = 7.0
    res = linear_probe.evaluate(torch.from_numpy(xtr), torch.from_numpy(ytr), xte, yte, device="cpu")
    assert np.isfinite(res.metrics["linear_probe.top1"].value)
    res = linear_probe.evaluate(xtr, ytr, xte, yte, solver="adam", epochs=2, device="cpu")
    assert np.isfinite(res.metrics["linear_probe.top1"].value)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"holdout_fraction": 0.0}, "holdout_fraction"),
        ({"weight_decays": ()}, "empty hyperparameter grid"),
        ({"solver": "adam", "lrs": ()}, "empty hyperparameter grid"),
        ({"weight_decays": (-1.0,)}, "weight decays"),
        ({"weight_decays": (1e-3, 1e-3)}, "distinct"),
        ({"solver": "adam", "weight_decays": (-1.0,)}, "weight decays"),
        ({"solver": "adam", "epochs": 0}, "epochs"),
        ({"epochs": 3}, "solver='adam' only"),
        ({"solver": "sgd"}, "solver"),
        ({"precision": "fp8"}, "precision"),
        ({"tol": 0.0}, "tol"),
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


def test_moments_combine_and_class_sums_match_numpy():
    """Moments of two disjoint row sets combine into those of their union (float64 numpy reference), the
    standardizer is scikit-learn's (population std), and class sums of standardized rows are brute force."""
    rng = np.random.default_rng(7)
    x = (rng.normal(size=(5000, 12)) * rng.uniform(0.1, 30, 12) + rng.uniform(-1e3, 1e3, 12)).astype(np.float32)
    y = rng.integers(0, 6, 5000)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    a_rows, b_rows = torch.arange(0, 5000, 3), torch.tensor([i for i in range(5000) if i % 3])
    both = Moments.of(xt, a_rows, yt, 6) + Moments.of(xt, b_rows, yt, 6)
    sc = both.standardizer()
    ref = StandardScaler().fit(x.astype(np.float64))
    np.testing.assert_allclose(sc.mean.double().numpy(), ref.mean_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(sc.std.double().numpy(), ref.scale_, rtol=1e-5)
    xs = (x.astype(np.float64) - sc.mean.double().numpy()) / sc.std.double().numpy()
    sums = np.stack([xs[y == c].sum(0) for c in range(6)])
    np.testing.assert_allclose(both.standardized_class_sums(sc).double().numpy(), sums, atol=1e-2, rtol=1e-4)
    assert both.n == 5000 and both.class_counts.tolist() == np.bincount(y, minlength=6).tolist()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_refit_after_selection_is_sklearn_refit_on_all_rows(precision):
    """The refit is solved in the hold-out fit rows' standardized space with per-feature penalty weights
    (s_all / s_fit)^2; its head must be scikit-learn's LogisticRegression on ALL training rows standardized by
    StandardScaler, at C = 1/(wd n). The hold-out rows are shifted and stretched on 6 features so that the two
    spaces differ (an unweighted penalty would give another head)."""
    xtr, ytr, xte, yte = _blobs(n_train=1200, n_test=600, seed=4)
    hold = linear_probe.stratified_holdout(ytr, 0.25, 0)
    xtr[np.ix_(hold, np.arange(6))] = xtr[np.ix_(hold, np.arange(6))] * 3.0 + 2.0
    xte[:, :6] = xte[:, :6] * 3.0 + 2.0
    x, y = torch.from_numpy(xtr), torch.from_numpy(ytr)
    wds = [1e-2, 1e-3]
    sel = linear_probe.select_weight_decay(x, y, 5, wds, holdout_fraction=0.25, seed=0,
                                           tol=1e-4 if precision == "fp32" else 3e-2, max_iter=500,
                                           dtype=logreg_lbfgs.PRECISIONS[precision], device=torch.device("cpu"),
                                           chunk=128)
    all_std = sel.moments.standardizer().std
    assert float((all_std / sel.scaler.std - 1).abs().max()) > 0.3  # the spaces differ: the weights matter
    assert sel.fit.stop == "gtol" and sel.fit.data is not None
    wd = wds[sel.index]
    tol = 1e-6 if precision == "fp32" else 1e-2  # bf16 passes stall near 1e-3
    head, fit = linear_probe.refit_after_selection(sel, wd, tol=tol, max_iter=2000)
    assert fit.grad_rel <= tol
    # the first gradient read only the hold-out rows (the fit rows' part came with the chosen solution)
    whole = fit.passes - hold.sum() / len(ytr)
    assert whole == pytest.approx(round(whole), abs=1e-3) and round(whole) >= fit.iterations
    sc = StandardScaler().fit(xtr)
    clf = LogisticRegression(C=1.0 / (wd * len(ytr)), tol=1e-10, max_iter=20000).fit(sc.transform(xtr), ytr)
    ref = clf.decision_function(sc.transform(xte))
    z = head.logits(torch.from_numpy(xte), torch.device("cpu")).double().numpy()
    if precision == "bf16":  # rounding aside, the same head: the exact reparameterization is checked in fp32
        assert (z.argmax(1) == ref.argmax(1)).mean() >= 0.98
        return
    # softmax logits are defined up to a constant per row: compare them centred
    rc = ref - ref.mean(1, keepdims=True)
    atol = 2e-4 * np.abs(rc).max()
    np.testing.assert_allclose(z - z.mean(1, keepdims=True), rc, atol=atol, rtol=0)
    assert (z.argmax(1) == ref.argmax(1)).all()
    # the unweighted penalty in the fit rows' space is another objective: its head is measurably off
    other = logreg_lbfgs.lbfgs(sel.objective, fit.weight, fit.bias, [wd], rtol=tol, max_iter=2000)[0]
    zo = logreg_lbfgs.LinearHead(sel.scaler, other.weight, other.bias).logits(torch.from_numpy(xte), torch.device("cpu"))
    zo = zo.double().numpy()
    assert np.abs(zo - zo.mean(1, keepdims=True) - rc).max() > 5 * atol
