"""chromify.gate: every check on both sides of its threshold, with and without a champion."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from skimage import data

from chromify.errors import GateError
from chromify.gate import Check, GateDecision, GateThresholds, ModelScore, decide
from chromify.metrics import image_metrics, summarise

GRAY = {
    "psnr": 20.0,
    "ssim": 0.80,
    "delta_e2000": 12.0,
    "colourfulness": 0.0,
    "colourfulness_truth": 35.0,
    "delta_cf": 35.0,
}
# Binary-exact numbers, so that "exactly at the threshold" means exactly.
T = GateThresholds(
    min_psnr_gain_db=0.5, max_delta_cf=10.0, champion_psnr_tolerance_db=0.25, champion_delta_cf_tolerance=1.0
)
ABSOLUTE = ("psnr_gain_over_gray", "delta_cf")
ALL_CHECKS = (*ABSOLUTE, "psnr_vs_champion", "delta_cf_vs_champion")


def score(model_id: str, psnr: float, delta_cf: float) -> ModelScore:
    metrics = {**GRAY, "psnr": psnr, "colourfulness": 35.0 - delta_cf, "delta_cf": delta_cf}
    return ModelScore(model_id, metrics)


# (candidate psnr, candidate ΔCF, champion (psnr, ΔCF) or None, expected pass per check in ALL_CHECKS order)
CASES = {
    "first run, clear pass": (22.0, 4.0, None, (True, True)),
    "first run, gain too small": (20.25, 4.0, None, (False, True)),
    "first run, gain exactly at minimum": (20.5, 4.0, None, (True, True)),
    "first run, gain just under minimum": (20.5 - 1e-6, 4.0, None, (False, True)),
    "first run, worse than gray": (19.0, 4.0, None, (False, True)),
    "first run, ΔCF exactly at maximum": (22.0, 10.0, None, (True, True)),
    "first run, ΔCF just over maximum": (22.0, 10.0 + 1e-6, None, (True, False)),
    "first run, washed out: both fail": (20.0, 30.0, None, (False, False)),
    "champion worse on both": (22.0, 4.0, (21.5, 5.0), (True, True, True, True)),
    "champion better by less than tolerance": (22.0, 4.0, (22.125, 4.0), (True, True, True, True)),
    "champion better by exactly tolerance": (22.0, 4.0, (22.25, 4.0), (True, True, True, True)),
    "champion better by more than tolerance": (22.0, 4.0, (22.5, 4.0), (True, True, False, True)),
    "champion ΔCF lower by exactly tolerance": (22.0, 5.0, (22.0, 4.0), (True, True, True, True)),
    "champion ΔCF lower by more than tolerance": (22.0, 5.0, (22.0, 3.5), (True, True, True, False)),
    "beats champion but not gray": (20.25, 4.0, (20.0, 4.0), (False, True, True, True)),
    "beats champion but ΔCF too large": (22.0, 12.0, (21.0, 15.0), (True, False, True, True)),
    "worse than champion on everything": (21.0, 9.0, (23.0, 2.0), (True, True, False, False)),
}


@pytest.mark.parametrize(("psnr", "dcf", "champ", "expected"), CASES.values(), ids=CASES.keys())
def test_decide_table(psnr, dcf, champ, expected):
    champion = None if champ is None else score("v1", *champ)
    decision = decide(score("v2", psnr, dcf), GRAY, champion, T)
    assert tuple(c.name for c in decision.checks) == ALL_CHECKS[: len(expected)]
    assert tuple(c.passed for c in decision.checks) == expected
    assert decision.passed is all(expected)
    assert decision.champion_id == (None if champ is None else "v1")


def test_check_values_and_thresholds():
    decision = decide(score("v2", 21.5, 3.0), GRAY, score("v1", 22.0, 2.5), T)
    got = {c.name: (c.value, c.threshold) for c in decision.checks}
    assert got == {
        "psnr_gain_over_gray": (1.5, 0.5),
        "delta_cf": (3.0, 10.0),
        "psnr_vs_champion": (21.5, 21.75),
        "delta_cf_vs_champion": (3.0, 3.5),
    }


def test_messages_are_one_readable_line():
    decision = decide(score("v2", 21.23, 3.2), GRAY, score("v1", 21.5, 2.0), T)
    assert [c.message for c in decision.checks] == [
        "PSNR gain over gray +1.23 dB ≥ +0.50 dB",
        "ΔCF 3.20 ≤ 10.00",
        "PSNR 21.23 dB < champion 21.50 dB − 0.25 dB",
        "ΔCF 3.20 > champion 2.00 + 1.00",
    ]


def test_default_thresholds_and_a_decimal_boundary():
    defaults = GateThresholds()
    assert (defaults.min_psnr_gain_db, defaults.max_delta_cf) == (0.0, 10.0)
    assert (defaults.champion_psnr_tolerance_db, defaults.champion_delta_cf_tolerance) == (0.1, 1.0)
    # 24.3 − 0.1 is 24.200000000000003 in binary; a candidate at 24.2 dB is on the boundary and passes.
    assert decide(score("v2", 24.2, 5.0), GRAY, score("v1", 24.3, 4.0), defaults).passed
    assert not decide(score("v2", 24.2 - 1e-6, 5.0), GRAY, score("v1", 24.3, 4.0), defaults).passed
    assert decide(score("v2", 20.0, 5.0), GRAY, None, defaults).passed  # no gain needed by default


def test_the_champion_itself_is_refused_as_a_decision_not_an_error():
    # A self-comparison would pass every check; an unchanged re-run (a cached cloud training step) is a green
    # run that registers nothing, not a failed one.
    same = score("v7", 22.0, 4.0)
    for champion in (same, score("v7", 10.0, 40.0)):
        decision = decide(same, GRAY, champion, T)
        assert not decision.passed and decision.champion_id == "v7"
        assert decision.reasons == ["the candidate is the champion 'v7' itself: nothing new to register"]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    ("side", "metric"),
    [
        ("candidate", "psnr"),
        ("candidate", "delta_cf"),
        ("baseline", "psnr"),
        ("champion", "psnr"),
        ("champion", "delta_cf"),
    ],
)
def test_non_finite_metric_raises_naming_it(side, metric, bad):
    metrics = {"candidate": dict(score("v2", 22.0, 4.0).metrics), "baseline": dict(GRAY)}
    metrics["champion"] = dict(score("v1", 21.0, 5.0).metrics)
    metrics[side][metric] = bad
    candidate, champion = ModelScore("v2", metrics["candidate"]), ModelScore("v1", metrics["champion"])
    with pytest.raises(GateError, match=f"{side}.*'{metric}' is {bad}"):
        decide(candidate, metrics["baseline"], champion, T)


@pytest.mark.parametrize("metric", ["psnr", "delta_cf"])
def test_missing_metric_raises_naming_it(metric):
    metrics = {k: v for k, v in score("v2", 22.0, 4.0).metrics.items() if k != metric}
    with pytest.raises(GateError, match=f"'{metric}' is missing"):
        decide(ModelScore("v2", metrics), GRAY, None, T)
    with pytest.raises(GateError, match="gray baseline: metric 'psnr' is missing"):
        decide(score("v2", 22.0, 4.0), {"ssim": 0.8}, None, T)


def test_to_dict_round_trips_through_json():
    failed = decide(score("v2", 22.0, 12.0), GRAY, score("v1", 23.0, 4.0), T)
    d = failed.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["passed"] is False and d["champion_id"] == "v1"
    assert [c["name"] for c in d["checks"]] == list(ALL_CHECKS)
    assert set(d["checks"][0]) == {"name", "passed", "value", "threshold", "message"}
    assert d["reasons"] == [c.message for c in failed.checks if not c.passed]
    assert len(d["reasons"]) == 3
    rebuilt = GateDecision(d["passed"], tuple(Check(**c) for c in d["checks"]), d["champion_id"])
    assert rebuilt == failed

    passed = decide(score("v2", 22.0, 4.0), GRAY, None, T).to_dict()
    assert json.loads(json.dumps(passed)) == passed
    assert passed["passed"] is True and passed["champion_id"] is None
    assert passed["reasons"] == [c["message"] for c in passed["checks"]]


def test_summary_is_one_line():
    failed = decide(score("v2", 22.0, 12.0), GRAY, score("v1", 21.0, 4.0), T).summary()
    assert "\n" not in failed and failed.startswith("gate FAILED vs champion v1 (2/4 checks)")
    assert "ΔCF 12.00 > 10.00" in failed
    passed = decide(score("v2", 22.0, 4.0), GRAY, None, T).summary()
    assert passed == "gate PASSED vs no champion (2/2 checks)"


def test_a_check_failed_by_less_than_its_rounding_shows_the_digits_that_tell_them_apart():
    thresholds = GateThresholds(min_psnr_gain_db=-10.0, max_delta_cf=35.24, champion_psnr_tolerance_db=0.1,
                                champion_delta_cf_tolerance=100.0)
    decision = decide(score("v2", 22.399, 35.2432), GRAY, score("v1", 22.5, 4.0), thresholds)
    assert decision.reasons == ["ΔCF 35.243 > 35.240", "PSNR 22.399 dB < champion 22.500 dB − 0.100 dB"]
    assert [c.name for c in decision.checks if not c.passed] == ["delta_cf", "psnr_vs_champion"]
    # a passing check at its threshold keeps two decimals: equal numbers read right with ≥ and ≤
    at_edge = decide(score("v2", 22.0, 35.24), GRAY, None, thresholds)
    assert at_edge.passed and at_edge.reasons[1] == "ΔCF 35.24 ≤ 35.24"


def test_dataclasses_are_frozen():
    decision = decide(score("v2", 22.0, 4.0), GRAY, None, T)
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.passed = False  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        T.max_delta_cf = 99.0  # type: ignore[misc]


def test_gate_on_real_metrics_stops_a_washed_out_model():
    """A desaturated colorizer beats gray on PSNR, which is exactly why ΔCF is gated too."""
    photos = [data.coffee()[::4, ::4] / 255.0, data.astronaut()[::4, ::4] / 255.0]

    def run(colorize) -> dict[str, float]:
        return summarise([image_metrics(colorize(p), p) for p in photos])

    def gray(p: np.ndarray) -> np.ndarray:
        return np.repeat(p.mean(axis=-1, keepdims=True), 3, axis=-1)

    baseline = run(gray)
    dull = run(lambda p: gray(p) + 0.2 * (p - gray(p)))
    good = run(lambda p: np.clip(p + np.random.default_rng(0).normal(0, 0.02, p.shape), 0, 1))
    assert dull["psnr"] > baseline["psnr"]

    dull_decision = decide(ModelScore("dull", dull), baseline, None, GateThresholds())
    assert [c.passed for c in dull_decision.checks] == [True, False]
    assert decide(ModelScore("good", good), baseline, ModelScore("dull", dull), GateThresholds()).passed


def test_gate_imports_without_scikit_image():
    code = "import sys, chromify.gate; bad = {'skimage', 'scipy'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)
