"""Greedy ensemble selection: behaviour on crafted prediction sets, tie-breaking, bad input."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from dfsearch.ensemble import align, evaluate, format_summary, rank_candidates, run_ensemble, select
from dfsearch.errors import DfsearchError
from dfsearch.store import candidate_row, predictions_frame, write_candidates, write_predictions

STRONG = ["strong_a", "strong_b", "strong_c", "strong_d"]


def _split_probs(rng, y, hard, kind):
    """Probabilities of fake for one candidate on one split.

    strong: confident and right off the hard subset, wrong (but not very confident) on it -- all
    strong candidates share the same hard subset, so their average makes the same mistakes.
    complement: right exactly on the hard subset, mildly wrong on 40% of the rest.
    noise: a coin flip.
    """
    n = len(y)
    if kind == "strong":
        p_true = np.where(hard, rng.uniform(0.25, 0.40, n), rng.uniform(0.75, 0.95, n))
    elif kind == "complement":
        wrong = ~hard & (rng.random(n) < 0.4)
        p_true = np.where(hard, rng.uniform(0.80, 0.95, n),
                          np.where(wrong, rng.uniform(0.30, 0.45, n), rng.uniform(0.55, 0.70, n)))
    else:
        p_true = rng.uniform(0.3, 0.7, n)
    return np.where(y == 1, p_true, 1 - p_true)


def _crafted_store(folder, *, extra=None, seed=0, n=400):
    """Four strong-but-correlated candidates, one complementary weaker one, two noise ones."""
    rng = np.random.default_rng(seed)
    frames, rows = [], []
    splits = {}
    for split in ("val", "test"):
        y = (rng.random(n) < 0.5).astype(np.int8)
        hard = rng.random(n) < 0.25
        splits[split] = (y, hard)
    kinds = {**{c: "strong" for c in STRONG}, "complement": "complement", "noise_1": "noise",
             "noise_2": "noise"}
    for cand, kind in kinds.items():
        for split, (y, hard) in splits.items():
            probs = _split_probs(rng, y, hard, kind)
            if extra and cand in extra:
                probs = extra[cand](split, probs, y)
            ids = [f"{split}/img_{j:04d}.jpg" for j in range(n)]
            frames.append(predictions_frame(cand, split, ids, y, probs))
        rows.append(candidate_row(cand, cand, f"arch_{kind}", {"lr": 0.1}, {"val_acc": 0.0},
                                  f"/ckpt/{cand}"))
    write_predictions(pd.concat(frames, ignore_index=True), folder)
    write_candidates(rows, folder)
    return folder


# ---------------------------------------------------------------------------------------------
# the point of greedy selection: it finds the complementary candidate


def test_greedy_picks_the_complementary_candidate_and_wins_on_test(tmp_path):
    store = _crafted_store(tmp_path / "store")
    res = run_ensemble(store, top_k=2, rounds=20, out_dir=tmp_path / "out")

    names = [m["candidate"] for m in res["members"]]
    assert "complement" in names
    assert len(names) == 2  # <= top_k distinct
    assert sum(m["weight"] for m in res["members"]) == pytest.approx(1.0)
    assert {m["arch"] for m in res["members"]} <= {"arch_strong", "arch_complement"}
    assert all(m["checkpoint"] == f"/ckpt/{m['candidate']}" for m in res["members"])

    # weights are selection counts over the kept prefix
    kept = res["trajectory"][: res["best_round"]]
    for m in res["members"]:
        count = sum(r["candidate"] == m["candidate"] for r in kept)
        assert m["weight"] == pytest.approx(count / res["best_round"])
    assert len({r["candidate"] for r in res["trajectory"]}) <= 2

    ens, single, naive = (res[k]["test"]["accuracy"] for k in ("ensemble", "best_single", "naive_top_k"))
    assert res["best_single"]["candidate"] in STRONG
    assert set(res["naive_top_k"]["candidates"]) <= set(STRONG)
    assert naive <= single + 0.02  # averaging correlated models does not help ...
    assert ens >= single + 0.05 and ens >= naive + 0.05  # ... adding the complementary one does
    # the trajectory's best val score is the ensemble's val accuracy
    assert res["trajectory"][res["best_round"] - 1]["val_score"] == pytest.approx(
        res["ensemble"]["val"]["accuracy"])


def test_outputs_written(tmp_path):
    store = _crafted_store(tmp_path / "store", n=200)
    out = tmp_path / "out"
    res = run_ensemble(store, top_k=4, rounds=10, out_dir=out)
    on_disk = json.loads((out / "ensemble.json").read_text())
    for key in ("members", "metric", "top_k", "rounds", "trajectory", "ensemble", "best_single",
                "naive_top_k", "source"):
        assert key in on_disk
    assert on_disk == res
    assert on_disk["source"] == str(store)
    assert set(on_disk["ensemble"]) == {"val", "test"}
    assert {"accuracy", "roc_auc", "log_loss", "confusion_matrix"} <= set(on_disk["ensemble"]["test"])
    assert set(on_disk["members"][0]) == {"candidate", "arch", "checkpoint", "weight", "calibration"}
    assert len(on_disk["trajectory"]) == 10
    for png in ("roc.png", "confusion.png", "trajectory.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    text = format_summary(res)
    assert "complement" in text and "best single" in text and "naive top-4" in text


def test_without_candidates_file_arch_is_null_and_nbest_limits_pool(tmp_path):
    store = _crafted_store(tmp_path / "store", n=200)
    (store / "candidates.parquet").unlink()
    res = run_ensemble(store, top_k=3, rounds=5, metric="log_loss", nbest=3, out_dir=tmp_path / "o")
    assert res["pool_size"] == 3
    assert all(m["arch"] is None and m["checkpoint"] is None for m in res["members"])
    # the complementary candidate is individually weak: nbest=3 keeps strong ones only
    assert all(m["candidate"] in STRONG for m in res["members"])


def test_roc_auc_metric_runs(tmp_path):
    store = _crafted_store(tmp_path / "store", n=120)
    res = run_ensemble(store, top_k=2, rounds=4, metric="roc_auc", out_dir=tmp_path / "o")
    assert res["metric"] == "roc_auc"
    assert res["trajectory"][0]["val_score"] <= res["ensemble"]["val"]["roc_auc"] + 1e-12


def test_vectorised_auc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    y = (rng.random(300) < 0.4).astype(np.int8)
    P = np.round(rng.random((5, 300)), 1).astype(np.float32)  # many ties
    order = rank_candidates(P, y, "roc_auc")
    aucs = [roc_auc_score(y, p) for p in P]
    assert aucs[order[0]] == pytest.approx(max(aucs))
    sel = select(P, y, top_k=1, rounds=1, metric="roc_auc")
    assert sel.trajectory[0]["val_score"] == pytest.approx(max(aucs))


# ---------------------------------------------------------------------------------------------
# select: best prefix and tie-breaking, asserted directly


def test_best_prefix_is_kept_not_the_last_step():
    # A and B each get 2/3 alone, (A+B)/2 gets all three right, any 2:1 mix gets one wrong again.
    y = np.array([1, 1, 0], dtype=np.int8)
    P = np.array([[0.9, 0.2, 0.1],   # A
                  [0.2, 0.9, 0.2]],  # B
                 dtype=np.float32)
    sel = select(P, y, top_k=2, rounds=3)
    scores = [r["val_score"] for r in sel.trajectory]
    assert scores == pytest.approx([2 / 3, 1.0, 2 / 3])
    assert sel.best_round == 2
    assert sel.weights == {0: 0.5, 1: 0.5}
    assert sel.counts == {0: 1, 1: 1}
    assert len(sel.trajectory) == 3


def test_best_prefix_ties_keep_the_shortest_prefix():
    y = np.array([1, 0], dtype=np.int8)
    P = np.array([[0.9, 0.1]], dtype=np.float32)
    sel = select(P, y, top_k=1, rounds=5)
    assert sel.best_round == 1 and sel.weights == {0: 1.0}


def test_equal_accuracy_lower_log_loss_wins():
    y = np.array([1, 0], dtype=np.int8)
    P = np.array([[0.6, 0.4],     # right, unsure
                  [0.9, 0.1]],    # right, confident: same accuracy, lower log loss
                 dtype=np.float32)
    sel = select(P, y, top_k=1, rounds=1)
    assert sel.trajectory[0]["candidate"] == 1


def test_equal_accuracy_and_log_loss_prefers_member_already_chosen():
    # (A+B)/2 = [0.6, 0.8, 0.1, 0.1] is A with two fake samples swapped: the same accuracy and
    # (in float32 too) the same log loss as A+A
    y = np.array([1, 1, 0, 0], dtype=np.int8)
    P = np.array([[0.4, 1.0, 0.1, 0.1],   # B: alone 3/4
                  [0.8, 0.6, 0.1, 0.1],   # A: alone 4/4 -> round 1
                  [0.3, 0.3, 0.6, 0.6]],  # D: bad
                 dtype=np.float32)
    sel = select(P, y, top_k=3, rounds=2)
    assert sel.trajectory[0]["candidate"] == 1
    # round 2: A+A and A+B have the same accuracy and log loss; B has the lower index, A wins
    assert sel.trajectory[1]["candidate"] == 1
    assert sel.weights == {1: 1.0}


def test_top_k_limits_distinct_members():
    rng = np.random.default_rng(1)
    y = (rng.random(500) < 0.5).astype(np.int8)
    P = np.clip(y + rng.normal(0, 0.6, (30, 500)), 0, 1).astype(np.float32)
    for k in (1, 3):
        sel = select(P, y, top_k=k, rounds=25, metric="log_loss")
        assert len({r["candidate"] for r in sel.trajectory}) <= k
        assert sum(sel.weights.values()) == pytest.approx(1.0)
        assert sel.weights == {i: c / sel.best_round for i, c in sel.counts.items()}


# ---------------------------------------------------------------------------------------------
# non-finite probabilities


def test_nan_and_inf_candidates_are_never_selected(tmp_path):
    y = np.array([1, 0, 1, 0], dtype=np.int8)
    P = np.array([[np.nan, 0.0, 1.0, 0.0], [0.6, 0.45, 0.4, 0.3]], dtype=np.float32)
    sel = select(P, y, top_k=2, rounds=3)
    assert set(sel.weights) == {1} and sel.excluded == [0]
    with pytest.raises(DfsearchError, match="NaN or infinite"):
        select(P[:1], y, top_k=1)

    # near-perfect candidates with a few NaN / inf values: kept out, nothing crashes
    def perfect_with_holes(value):
        def f(split, probs, y):
            out = np.where(y == 1, 0.99, 0.01)
            out[::3] = value
            return out
        return f

    store = _crafted_store(tmp_path / "store", n=200,
                           extra={"noise_1": perfect_with_holes(np.nan),
                                  "noise_2": perfect_with_holes(np.inf)})
    res = run_ensemble(store, top_k=4, rounds=10, out_dir=tmp_path / "out")
    names = {m["candidate"] for m in res["members"]}
    assert not names & {"noise_1", "noise_2"}
    assert set(res["excluded_non_finite"]) == {"noise_1", "noise_2"}
    assert not {"noise_1", "noise_2"} & set(res["naive_top_k"]["candidates"])
    assert all(np.isfinite(r["val_score"]) for r in res["trajectory"])


# ---------------------------------------------------------------------------------------------
# candidates at chance never enter the pool (issue #12)


def _store_of(folder, kinds: dict, n=300, seed=0):
    """Candidates by hand: ``kinds[name](y, rng) -> probabilities``, on val and test alike."""
    rng = np.random.default_rng(seed)
    frames = []
    for split in ("val", "test"):
        y = (np.arange(n) % 2).astype(np.int8)
        ids = [f"{split}/img_{j:04d}.jpg" for j in range(n)]
        frames += [predictions_frame(c, split, ids, y, f(y, rng)) for c, f in kinds.items()]
    write_predictions(pd.concat(frames, ignore_index=True), folder)
    return folder


SHIFTED = {  # perfectly ranked but every probability below 0.5: accuracy 0.5 at the 0.5 threshold
    "good": lambda y, rng: np.where(y == 1, rng.uniform(0.30, 0.45, len(y)), rng.uniform(0.05, 0.20, len(y))),
    "constant": lambda y, rng: np.full(len(y), 0.7),  # averaged in, it moves the threshold: accuracy 1.0
    "coin": lambda y, rng: rng.uniform(0.2, 0.8, len(y)),
}


def test_a_member_that_only_shifts_the_threshold_is_left_out(tmp_path):
    store = _store_of(tmp_path / "store", SHIFTED)
    # the case is real: let in, on raw probabilities the constant is chosen and "wins" 0.5 points of accuracy
    loose = run_ensemble(store, top_k=3, rounds=10, chance_z=None, calibrate_candidates=False,
                         out_dir=tmp_path / "loose")
    assert "constant" in {m["candidate"] for m in loose["members"]}
    assert loose["ensemble"]["test"]["accuracy"] >= loose["best_single"]["test"]["accuracy"] + 0.4
    # candidates calibrated first (the default), the good one's own map undoes its shift: even let in,
    # the constant buys nothing and is not chosen
    calibrated = run_ensemble(store, top_k=3, rounds=10, chance_z=None, out_dir=tmp_path / "cal")
    assert [m["candidate"] for m in calibrated["members"]] == ["good"]
    assert calibrated["ensemble"]["test"]["accuracy"] == 1.0

    res = run_ensemble(store, top_k=3, rounds=10, out_dir=tmp_path / "out")
    assert [m["candidate"] for m in res["members"]] == ["good"]
    assert res["pool_size"] == 1 and res["candidates"] == 3 and res["chance_z"] == 2.0
    why = {d["candidate"]: d for d in res["excluded_chance_level"]}
    assert set(why) == {"constant", "coin"}
    assert "near-constant" in why["constant"]["reason"] and why["constant"]["std"] == 0.0
    assert "not above chance" in why["coin"]["reason"] and why["coin"]["z"] <= 2.0
    assert "1 of 3 candidates; 2 at chance on val left out (coin, constant)" in format_summary(res)
    assert json.loads((tmp_path / "out" / "ensemble.json").read_text())["excluded_chance_level"][0]["reason"]


def test_no_candidate_above_chance_is_an_error_naming_them(tmp_path):
    store = _store_of(tmp_path / "store", {k: SHIFTED[k] for k in ("constant", "coin")})
    with pytest.raises(DfsearchError, match=r"no candidate beats chance on val: all 2 .*coin: val AUC .*constant: near-constant"
                                            r".*--keep-chance-level"):
        run_ensemble(store, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written


def test_screen_uses_the_null_standard_error_of_the_auc():
    from sklearn.metrics import roc_auc_score

    from dfsearch.ensemble.screening import null_auc_se, screen

    y = (np.arange(600) % 2).astype(np.int8)
    assert null_auc_se(y) == pytest.approx(np.sqrt(601 / (12 * 300 * 300)))  # 0.0236
    rng = np.random.default_rng(1)
    weak = np.clip(0.5 + 0.1 * (y - 0.5) + rng.normal(0, 0.2, 600), 0, 1)  # a weak but real detector
    auc = roc_auc_score(y, weak)
    keep, dropped = screen(np.stack([weak, 1 - weak]), y)
    assert (auc - 0.5) / null_auc_se(y) > 2 and keep == [0]
    assert dropped[0]["index"] == 1 and dropped[0]["val_auc"] == pytest.approx(1 - auc)  # worse than chance
    assert screen(np.stack([weak]), np.ones(600, dtype=np.int8)) == ([0], [])  # one class: AUC undefined


# ---------------------------------------------------------------------------------------------
# calibration and the threshold (issue #12 §3)


def _over_confident(rng, n, sharpen=3.0):
    """Labels drawn from calibrated probabilities q, then reported as sigmoid(sharpen * logit(q))."""
    from scipy.special import expit, logit

    q = expit(rng.normal(0, 1.2, n))
    y = (rng.random(n) < q).astype(np.int8)
    return y, expit(sharpen * logit(q))


def test_platt_scaling_lowers_ece_on_an_over_confident_case():
    from dfsearch.ensemble.calibration import calibrate, fit_platt
    from dfsearch.metrics import ece, roc_auc

    rng = np.random.default_rng(0)
    y_val, p_val = _over_confident(rng, 4000)
    y_test, p_test = _over_confident(rng, 4000)
    slope, intercept = fit_platt(y_val, p_val)
    assert slope == pytest.approx(1 / 3, rel=0.1) and abs(intercept) < 0.1  # undoes the sharpening it was built with
    before, after = ece(y_test, p_test), ece(y_test, calibrate(p_test, slope, intercept))
    assert before > 0.08 and after < 0.03  # on test: fitted on val only
    assert roc_auc(y_test, calibrate(p_test, slope, intercept)) == pytest.approx(roc_auc(y_test, p_test))  # ranking kept
    assert fit_platt(np.ones(5), np.full(5, 0.9)) == (1.0, 0.0)  # one class: nothing to fit


def test_threshold_is_chosen_on_val_for_accuracy_or_a_target_false_positive_rate():
    from dfsearch.ensemble.calibration import choose_threshold

    rng = np.random.default_rng(3)
    y = (np.arange(500) % 2).astype(np.int8)
    p = SHIFTED["good"](y, rng)  # perfectly ranked, all below 0.5
    t = choose_threshold(y, p)
    assert ((p >= t) == (y == 1)).mean() == 1.0
    assert t == pytest.approx((p[y == 0].max() + p[y == 1].min()) / 2)  # the middle of the gap: a margin both ways
    assert choose_threshold(y, np.where(y == 1, 0.9, 0.1)) == 0.5  # 0.5 is among the best: kept
    noisy = np.clip(p + rng.normal(0, 0.1, 500), 0, 1)
    cuts = np.unique(np.r_[noisy, 0.5, 2.0])
    best = max(((noisy >= c) == (y == 1)).mean() for c in cuts)  # brute force
    assert ((noisy >= choose_threshold(y, noisy)) == (y == 1)).mean() == best
    t = choose_threshold(y, noisy, target_fpr=0.05)
    fpr = lambda c: ((noisy >= c) & (y == 0)).sum() / (y == 0).sum()  # noqa: E731
    assert fpr(t) <= 0.05 and all(fpr(c) > 0.05 for c in cuts[cuts < t])  # the lowest such threshold


def test_the_ensemble_is_calibrated_on_val_and_reports_it(tmp_path):
    store = _store_of(tmp_path / "store", {"good": SHIFTED["good"]})
    res = run_ensemble(store, top_k=1, rounds=2, calibrate_candidates=False, out_dir=tmp_path / "out")
    cal = res["calibration"]
    assert cal["method"] == "platt" and cal["slope"] > 0 and cal["target_fpr"] is None
    assert res["ensemble"]["test"]["accuracy"] == 0.5  # at 0.5 the shifted detector calls everything real
    assert cal["test"]["accuracy"] == 1.0  # at the threshold chosen on val
    assert cal["test"]["ece_uncalibrated"] > 0.3 and cal["test"]["ece"] < 0.1  # the shift is undone
    assert "calibrated on val: Platt slope" in format_summary(res) and "ensemble, calibrated @" in format_summary(res)
    on_disk = json.loads((tmp_path / "out" / "ensemble.json").read_text())["calibration"]
    assert on_disk["threshold"] == pytest.approx(cal["threshold"])
    res = run_ensemble(store, top_k=1, rounds=2, target_fpr=0.01, out_dir=tmp_path / "out2")
    assert res["calibration"]["target_fpr"] == 0.01 and res["calibration"]["val"]["confusion_matrix"][0][1] <= 1
    # with the candidate calibrated first (the default) its own map undoes the shift; the blend's is ~identity
    member = res["members"][0]["calibration"]
    assert res["ensemble"]["test"]["accuracy"] == 1.0 and member["intercept"] != 0.0
    assert res["candidate_calibration"]["val_ece_median_after"] < res["candidate_calibration"]["val_ece_median_before"]
    assert "candidates Platt-scaled on val before selection" in format_summary(res)


# ---------------------------------------------------------------------------------------------
# bad input


def _frame(spec):
    """spec: list of (candidate, split, ids, labels, probs)."""
    return pd.concat([predictions_frame(*s) for s in spec], ignore_index=True)


def _ok(cand, split="val", ids=("a", "b", "c"), labels=(1, 0, 1)):
    return (cand, split, list(ids), list(labels), [0.7, 0.2, 0.6][: len(ids)])


def test_align_shapes_and_sorting():
    pool = align(_frame([_ok("z"), _ok("z", "test"),
                         ("m", "val", ["c", "a", "b"], [1, 1, 0], [0.1, 0.2, 0.3]), _ok("m", "test")]))
    assert pool.candidates == ["m", "z"]
    assert list(pool.sample_ids["val"]) == ["a", "b", "c"]
    assert pool.P["val"].shape == (2, 3) and pool.P["val"].dtype == np.float32
    assert pool.y["val"].dtype == np.int8 and list(pool.y["val"]) == [1, 0, 1]
    np.testing.assert_allclose(pool.P["val"][0], [0.2, 0.3, 0.1])


def test_mismatched_sample_ids(tmp_path):
    df = _frame([_ok("one"), _ok("one", "test"), _ok("two", ids=("a", "b", "x")), _ok("two", "test")])
    write_predictions(df, tmp_path)
    with pytest.raises(DfsearchError) as e:
        run_ensemble(tmp_path, out_dir=tmp_path / "o")
    msg = str(e.value)
    assert "'val'" in msg and "same sample_ids" in msg
    assert "'one'" in msg and "'x'" in msg and "'two'" in msg and "'c'" in msg


def test_candidate_without_test_predictions():
    with pytest.raises(DfsearchError, match=r"'two'.*no 'test' predictions"):
        align(_frame([_ok("one"), _ok("one", "test"), _ok("two")]))


def test_disagreeing_labels(tmp_path):
    df = _frame([_ok("one"), _ok("one", "test"), _ok("two", labels=(1, 1, 1)), _ok("two", "test")])
    write_predictions(df, tmp_path)
    with pytest.raises(DfsearchError) as e:
        run_ensemble(tmp_path, out_dir=tmp_path / "o")
    msg = str(e.value)
    assert "disagree on the label" in msg and "'b'" in msg and "'one'" in msg and "'two'" in msg


def test_missing_test_split(tmp_path):
    write_predictions(_frame([_ok("one"), _ok("two")]), tmp_path)
    with pytest.raises(DfsearchError, match="missing 'test' split"):
        run_ensemble(tmp_path, out_dir=tmp_path / "o")


def test_empty_pool_and_empty_folder(tmp_path):
    with pytest.raises(DfsearchError, match="empty pool"):
        align(_frame([_ok("one")]).iloc[:0])
    with pytest.raises(DfsearchError, match="empty pool"):
        select(np.zeros((0, 3), np.float32), np.zeros(3, np.int8), top_k=1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DfsearchError, match=r"no predictions\*\.parquet"):
        run_ensemble(tmp_path / "empty", out_dir=tmp_path / "o")


@pytest.mark.parametrize("kwargs, needle", [
    ({"top_k": 0}, "top_k must be an integer >= 1"),
    ({"top_k": 2, "rounds": 0}, "rounds must be an integer >= 1"),
    ({"top_k": 2, "metric": "f1"}, "metric 'f1' is not supported"),
    ({"target_fpr": 0.0}, r"target_fpr 0.0: must be in \(0, 1\)"),
    ({"target_fpr": 1.5}, r"target_fpr 1.5: must be in \(0, 1\)"),
])
def test_bad_arguments(tmp_path, kwargs, needle):
    y = np.array([1, 0], dtype=np.int8)
    P = np.array([[0.9, 0.1]], dtype=np.float32)
    if "target_fpr" not in kwargs:  # select() does not take it
        with pytest.raises(DfsearchError, match=needle):
            select(P, y, **kwargs)
    with pytest.raises(DfsearchError, match=needle):  # checked before any reading
        run_ensemble(tmp_path / "does_not_exist", out_dir=tmp_path / "o", **kwargs)


def test_evaluate_reports_val_and_test():
    pool = align(_frame([_ok("one"), _ok("one", "test"),
                         ("two", "val", ["a", "b", "c"], [1, 0, 1], [0.9, 0.1, 0.2]),
                         ("two", "test", ["a", "b", "c"], [1, 0, 1], [0.9, 0.1, 0.2])]))
    sel = select(pool.P["val"], pool.y["val"], top_k=1, rounds=2)
    ev = evaluate(pool, sel, top_k=2)
    assert ev["best_single"]["candidate"] == "one"  # 3/3 vs 2/3
    assert ev["naive_top_k"]["candidates"] == ["one", "two"]
    assert ev["ensemble"]["test"]["accuracy"] == 1.0 and ev["ensemble"]["val"]["n"] == 3


# ---------------------------------------------------------------------------------------------
# the metrics selection scores with; a light package and a light command


def test_numpy_log_loss_and_accuracy_match_sklearn():
    from sklearn.metrics import accuracy_score
    from sklearn.metrics import log_loss as sk_log_loss

    from dfsearch import metrics as M

    rng = np.random.default_rng(4)
    y = (rng.random(1000) < 0.3).astype(np.int8)
    p = rng.random(1000)
    p[:5] = [0.0, 1.0, 0.5, 1e-12, 1 - 1e-12]  # clipped at EPS, and the threshold itself
    clipped = np.clip(p, M.EPS, 1 - M.EPS)
    assert M.log_loss(y, p) == pytest.approx(sk_log_loss(y, clipped, labels=[0, 1]), rel=1e-12)
    assert M.accuracy(y, p) == accuracy_score(y == 1, p >= 0.5)
    assert M.log_loss(np.ones(3), [1.0, 0.9, np.nan]) == pytest.approx(
        sk_log_loss([1, 1, 1], np.clip([1.0, 0.9, 0.5], M.EPS, 1 - M.EPS), labels=[0, 1]), rel=1e-12)
    assert np.isnan(M.log_loss([], [])) and np.isnan(M.accuracy([], []))


_HEAVY = ("torch", "ray", "sklearn", "matplotlib", "pandas", "pyarrow", "scipy")


def _fresh_python(code: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_importing_the_package_and_the_command_is_light():
    code = ("import sys, dfsearch.ensemble, dfsearch.ensemble_cli; "
            f"print(sorted(m for m in {_HEAVY!r} if m in sys.modules))")
    out = _fresh_python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_ensemble_command_rejects_a_missing_run_folder_without_heavy_imports(tmp_path):
    import time

    code = ("import sys, time; t0 = time.perf_counter(); from dfsearch.ensemble_cli import main; "
            f"rc = main(['--run', {str(tmp_path / 'nope')!r}]); "
            "print(rc, sorted(m for m in %r if m in sys.modules), time.perf_counter() - t0)" % (_HEAVY,))
    t0 = time.perf_counter()
    out = _fresh_python(code)
    wall = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("2 []"), out.stdout  # exit status 2, nothing heavy imported
    assert "ensemble: error: --run" in out.stderr and "no predictions.parquet there" in out.stderr
    took = float(out.stdout.split()[-1])  # the import and the check
    assert took < 1.0 and wall < 10, (took, wall)  # wall: with python's own start, on a loaded machine


@pytest.mark.parametrize("fpr", ["0", "1.5"])
def test_a_target_fpr_outside_0_1_is_rejected_before_any_reading(tmp_path, fpr, capsys):
    from dfsearch.ensemble_cli import main

    store = _store_of(tmp_path / "store", {"good": SHIFTED["good"]})
    assert main(["--predictions", str(store), "--target-fpr", fpr, "--wandb-mode", "disabled"]) == 2
    err = capsys.readouterr().err
    assert f"--target-fpr {float(fpr)}: must be in (0, 1)" in err and not (store / "ensemble").exists()


def test_the_command_names_the_store_file_as_the_store_does():
    from dfsearch import ensemble_cli, store

    assert ensemble_cli.PREDICTIONS_FILE == store.PREDICTIONS_FILE


# ---------------------------------------------------------------------------------------------
# the side-by-side comparison on test (issue #12 section 4)


def test_comparison_credits_the_ensemble_only_with_what_combining_buys(tmp_path):
    """Each entry is calibrated at its own val threshold. On the crafted store the complementary
    member is a real gain: the paired interval of the accuracy gain lies above 0. A store whose
    ensemble is the best single alone has gain exactly 0, interval [0, 0]."""
    res = run_ensemble(_crafted_store(tmp_path / "store"), top_k=4, rounds=20, n_boot=300, out_dir=tmp_path / "o")
    comp = res["comparison"]
    assert set(comp["rows"]) == {"ensemble", "best_single", "naive_top_k"}
    for row in comp["rows"].values():
        lo, hi = row["ci"]["accuracy"]
        assert lo <= row["test"]["accuracy"] <= hi and hi - lo < 0.2
    gain = comp["gain"]["accuracy"]
    assert gain["diff"] == pytest.approx(comp["rows"]["ensemble"]["test"]["accuracy"]
                                         - comp["rows"]["best_single"]["test"]["accuracy"])
    assert gain["ci"][0] > 0
    assert comp["cost"] == {}  # /ckpt/... does not exist: no cost, and no error
    text = format_summary(res)
    assert "gain of the ensemble over the best single (paired): accuracy +" in text
    assert "(inside the noise)" not in text.split("gain of")[1].split(",")[0]

    def one_strong(split, probs, y):  # only strong_a is better than chance: the ensemble is it alone
        return probs

    rng = np.random.default_rng(1)
    frames = []
    for split in ("val", "test"):
        y = np.repeat([0, 1], 100).astype(np.int8)
        ids = [f"{split}/{'fake' if v else 'real'}/{j:03d}.jpg" for j, v in enumerate(y)]
        frames.append(predictions_frame("solo", split, ids, y, np.clip(0.3 + 0.4 * y + rng.normal(0, 0.15, 200), 0, 1)))
    solo = tmp_path / "solo"
    write_predictions(pd.concat(frames, ignore_index=True), solo)
    res = run_ensemble(solo, top_k=2, rounds=5, n_boot=100, out_dir=tmp_path / "o2")
    assert res["comparison"]["gain"]["accuracy"] == {"diff": 0.0, "ci": [0.0, 0.0]}
    assert "accuracy +0.000 [+0.000, +0.000] (inside the noise)" in format_summary(res)


def test_per_fake_source_rows_score_each_generator_against_all_real_images(tmp_path):
    """Fakes in fake/<source>/ folders (the benchmark's families): a detector that finds only the
    blend fakes has AUC ~1 on blend and ~0.5 on upsample, each against all the real images, with a
    bootstrap interval that holds chance for upsample only."""
    rng = np.random.default_rng(0)
    frames = []
    for split in ("val", "test"):
        ids = ([f"{split}/real/{j:03d}.jpg" for j in range(100)] + [f"{split}/fake/blend/{j:03d}.jpg" for j in range(50)]
               + [f"{split}/fake/upsample/{j:03d}.jpg" for j in range(50)])
        y = np.repeat([0, 1], 100).astype(np.int8)
        blend_found = np.r_[rng.uniform(0.1, 0.5, 100), rng.uniform(0.6, 0.9, 50), rng.uniform(0.1, 0.5, 50)]
        frames.append(predictions_frame("blend_finder", split, ids, y, blend_found))
    write_predictions(pd.concat(frames, ignore_index=True), tmp_path / "s")
    res = run_ensemble(tmp_path / "s", top_k=1, rounds=3, n_boot=200, out_dir=tmp_path / "o")
    per = res["comparison"]["per_source"]
    assert set(per) == {"blend", "upsample"}
    assert per["blend"]["ensemble"]["roc_auc"] == 1.0 and per["blend"]["ensemble"]["n_fake"] == 50
    assert 0.35 < per["upsample"]["ensemble"]["roc_auc"] < 0.65
    assert per["blend"]["ensemble"]["detected"] > per["upsample"]["ensemble"]["detected"]
    assert per["blend"]["ensemble"]["roc_auc_ci"] == [1.0, 1.0]
    lo, hi = per["upsample"]["ensemble"]["roc_auc_ci"]
    assert lo < per["upsample"]["ensemble"]["roc_auc"] < hi and lo < 0.5 < hi and hi - lo < 0.3
    assert re.search(r"blend \(50 fakes\): ensemble 0\.9\d\d / 1\.000", format_summary(res))


def test_predict_time_cost_counts_every_member(tmp_path):
    """With checkpoints in the run folder, each entry's parameters are the sum of its members'
    (read from the safetensors headers) and its images/s those of running them all."""
    import torch

    from dfsearch import checkpoint as ckpt_io
    from dfsearch import models
    from dfsearch.config import TrainConfig
    from dfsearch.ensemble.cost import count_params

    store = _crafted_store(tmp_path / "run", n=200)
    cands = pd.read_parquet(store / "candidates.parquet")
    for i, cand in enumerate(cands["candidate"]):
        folder = store / "train" / cand / "checkpoint_000001"
        torch.manual_seed(i)
        model = models.create("small_cnn", img_size=16)
        cfg = TrainConfig(arch="small_cnn", img_size=16, input_policy="crop")
        ckpt_io.save(folder, model, {"train": cfg.model_dump(), "data": models.data_config("small_cnn", 16)}, {})
    cands["checkpoint"] = [f"train/{c}/checkpoint_000001" for c in cands["candidate"]]
    cands.to_parquet(store / "candidates.parquet")
    res = run_ensemble(store, top_k=4, rounds=20, n_boot=0, out_dir=tmp_path / "o")
    cost = res["comparison"]["cost"]
    one = count_params(store / "train" / "strong_a" / "checkpoint_000001")
    assert one == models.count_params(models.create("small_cnn", img_size=16))
    assert cost["best_single"]["params"] == one and cost["best_single"]["members"] == 1
    assert cost["ensemble"]["params"] == one * len(res["members"])
    assert cost["naive_top_k"]["members"] == len(res["naive_top_k"]["candidates"])
    assert 0 < cost["ensemble"]["images_per_s"] < cost["best_single"]["images_per_s"] * 1.5
