"""The evaluation gate: may a newly trained model be promoted?

Like TFX's Evaluator it combines absolute thresholds (beat the gray baseline, keep ΔCF small) with change
thresholds against the current champion (do not get worse by more than a tolerance). It is a pure function of
summarised metrics (chromify.metrics.summarise), so any decision can be replayed from the stored numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from chromify.errors import GateError

# Metrics are reported to far fewer digits than this; the slack keeps a boundary written in decimal
# (champion 24.3 dB − tolerance 0.1 dB vs candidate 24.2 dB) from failing on binary rounding.
_SLACK = 1e-9


@dataclass(frozen=True)
class GateThresholds:
    """PSNR values in dB; ΔCF in colourfulness units (Hasler & Süsstrunk, 0–255 sRGB)."""

    min_psnr_gain_db: float = 0.0
    max_delta_cf: float = 10.0
    champion_psnr_tolerance_db: float = 0.1
    champion_delta_cf_tolerance: float = 1.0


@dataclass(frozen=True)
class ModelScore:
    """A model's summarised metrics: psnr, ssim, delta_e2000, colourfulness, colourfulness_truth, delta_cf."""

    model_id: str
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class Check:
    """One comparison; `message` is a single line for logs and the run report."""

    name: str
    passed: bool
    value: float
    threshold: float
    message: str


@dataclass(frozen=True)
class GateDecision:
    """Passed only if every check passed; champion_id is None on a first run."""

    passed: bool
    checks: tuple[Check, ...]
    champion_id: str | None

    @property
    def reasons(self) -> list[str]:
        """Why: the failed checks' messages, or every message when the gate passed."""
        return [c.message for c in self.checks if self.passed or not c.passed]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for the metrics/report files and the registry."""
        return {
            "passed": self.passed,
            "champion_id": self.champion_id,
            "checks": [asdict(c) for c in self.checks],
            "reasons": self.reasons,
        }

    def summary(self) -> str:
        """One line, e.g. 'gate FAILED vs champion v3 (3/4 checks): ΔCF 12.40 > 10.00'."""
        against = f"champion {self.champion_id}" if self.champion_id is not None else "no champion"
        n_passed = sum(c.passed for c in self.checks)
        verdict = "PASSED" if self.passed else "FAILED"
        line = f"gate {verdict} vs {against} ({n_passed}/{len(self.checks)} checks)"
        return line if self.passed else f"{line}: {'; '.join(self.reasons)}"


def _metric(metrics: Mapping[str, float], name: str, owner: str) -> float:
    if name not in metrics:
        raise GateError(f"{owner}: metric '{name}' is missing")
    value = float(metrics[name])
    if not math.isfinite(value):
        raise GateError(f"{owner}: metric '{name}' is {value}, not a finite number")
    return value


Say = Callable[[int], str]  # a side of a check's message, with its numbers at the given decimals


def _decimals(value: float, threshold: float, passed: bool) -> int:
    """2, or as many as a failed check needs to show its value and threshold apart (never 'ΔCF 35.24 > 35.24')."""
    d = 2
    while not passed and d < 10 and f"{value:.{d}f}" == f"{threshold:.{d}f}":
        d += 1
    return d


def _at_least(name: str, value: float, threshold: float, lhs: Say, rhs: Say) -> Check:
    passed = value >= threshold - _SLACK
    d = _decimals(value, threshold, passed)
    return Check(name, passed, value, threshold, f"{lhs(d)} {'≥' if passed else '<'} {rhs(d)}")


def _at_most(name: str, value: float, threshold: float, lhs: Say, rhs: Say) -> Check:
    passed = value <= threshold + _SLACK
    d = _decimals(value, threshold, passed)
    return Check(name, passed, value, threshold, f"{lhs(d)} {'≤' if passed else '>'} {rhs(d)}")


def decide(
    candidate: ModelScore,
    baseline: Mapping[str, float],
    champion: ModelScore | None,
    thresholds: GateThresholds,
) -> GateDecision:
    """Gate a candidate against the gray baseline's metrics and, if there is one, the champion's.

    Raises GateError if a needed metric is missing or not finite. A candidate that is the champion itself (an
    unchanged re-run, a cached training step) fails: a self-comparison would pass, but there is nothing new to
    register, and that is a decision (a green run that registers nothing), not an error.
    """
    if champion is not None and champion.model_id == candidate.model_id:
        return GateDecision(False, (Check("not_the_champion", False, 0.0, 0.0, f"the candidate is the champion "
                                          f"'{champion.model_id}' itself: nothing new to register"),),
                            champion.model_id)
    who = f"candidate '{candidate.model_id}'"
    psnr = _metric(candidate.metrics, "psnr", who)
    dcf = _metric(candidate.metrics, "delta_cf", who)
    gain = psnr - _metric(baseline, "psnr", "gray baseline")
    t = thresholds
    checks = [
        _at_least("psnr_gain_over_gray", gain, t.min_psnr_gain_db,
                  lambda d: f"PSNR gain over gray {gain:+.{d}f} dB", lambda d: f"{t.min_psnr_gain_db:+.{d}f} dB"),
        _at_most("delta_cf", dcf, t.max_delta_cf, lambda d: f"ΔCF {dcf:.{d}f}", lambda d: f"{t.max_delta_cf:.{d}f}"),
    ]
    if champion is not None:
        who = f"champion '{champion.model_id}'"
        champ_psnr = _metric(champion.metrics, "psnr", who)
        champ_dcf = _metric(champion.metrics, "delta_cf", who)
        psnr_tol, dcf_tol = t.champion_psnr_tolerance_db, t.champion_delta_cf_tolerance
        checks += [
            _at_least("psnr_vs_champion", psnr, champ_psnr - psnr_tol, lambda d: f"PSNR {psnr:.{d}f} dB",
                      lambda d: f"champion {champ_psnr:.{d}f} dB − {psnr_tol:.{d}f} dB"),
            _at_most("delta_cf_vs_champion", dcf, champ_dcf + dcf_tol, lambda d: f"ΔCF {dcf:.{d}f}",
                     lambda d: f"champion {champ_dcf:.{d}f} + {dcf_tol:.{d}f}"),
        ]
    return GateDecision(
        passed=all(c.passed for c in checks),
        checks=tuple(checks),
        champion_id=None if champion is None else champion.model_id,
    )
