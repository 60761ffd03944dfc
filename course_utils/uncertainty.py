"""How sure is a score or a difference between two methods? Seeded bootstrap intervals.

Every method is judged on the same test questions, so two methods' scores come in pairs, one
pair per question. The paired bootstrap resamples QUESTIONS with replacement (the same draw for
both methods), recomputes the difference of the mean scores each time, and reads the 2.5th and
97.5th percentiles of those differences: a 95 % interval for the difference. Pairing matters:
a question that is hard for both methods moves both means together and cancels out of the
difference, so paired intervals are narrower than two separate ones, and honest.

With 40 or 100 questions the intervals are wide. An interval that contains 0 says the data do
not show a difference in either direction; it does not say the methods are equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

N_RESAMPLES = 2000      # enough for stable 2.5 % / 97.5 % percentiles (their error ~ 0.005)
CONFIDENCE = 0.95
SEED = 42


@dataclass(frozen=True)
class Interval:
    """An estimate with its bootstrap interval: a mean, or a difference of two means."""

    estimate: float      # the mean (or the difference of means) on the data as it is
    low: float           # lower end of the interval
    high: float          # upper end
    n: int               # questions (pairs) the estimate is computed from
    confidence: float = CONFIDENCE

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0: the data show a difference."""
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return {**asdict(self), "excludes_zero": self.excludes_zero}

    @classmethod
    def from_dict(cls, data: dict) -> Interval:
        return cls(**{k: data[k] for k in ("estimate", "low", "high", "n", "confidence")})

    def __str__(self) -> str:
        """0.412 [0.351, 0.470]"""
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def signed(self) -> str:
        """+0.061 [-0.012, +0.135]: for differences, where the sign is the message."""
        return f"{self.estimate:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def _as_array(values: Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(list(values), dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty list of per-question scores")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds NaN or infinite scores; score every question first")
    return array


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def _draws(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n) question indices drawn with replacement, the same for every caller
    with the same seed and n: pairs of methods see the same resamples."""
    if n_resamples < 100:
        raise ValueError(f"n_resamples must be at least 100, got {n_resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def mean_interval(values: Sequence[float], n_resamples: int = N_RESAMPLES, seed: int = SEED,
                  confidence: float = CONFIDENCE) -> Interval:
    """The mean of per-question scores with its bootstrap interval."""
    scores = _as_array(values, "values")
    means = scores[_draws(len(scores), n_resamples, seed)].mean(axis=1)
    return Interval(float(scores.mean()), *_percentiles(means, confidence), n=len(scores),
                    confidence=confidence)


def paired_difference(before: Sequence[float], after: Sequence[float],
                      n_resamples: int = N_RESAMPLES, seed: int = SEED,
                      confidence: float = CONFIDENCE) -> Interval:
    """mean(after) - mean(before) over the same questions, with a paired bootstrap interval.

    before, after: per-question scores of two methods (or of one model before and after
    training), in the same question order.
    """
    a, b = _as_array(before, "before"), _as_array(after, "after")
    if len(a) != len(b):
        raise ValueError(f"paired scores need the same questions: {len(a)} scores before, "
                         f"{len(b)} after")
    differences = b - a
    resampled = differences[_draws(len(differences), n_resamples, seed)].mean(axis=1)
    return Interval(float(differences.mean()), *_percentiles(resampled, confidence),
                    n=len(differences), confidence=confidence)


def split_by(values: Sequence[float], groups: Sequence[str]) -> dict[str, list[float]]:
    """Per-question scores split by a label per question (e.g. "answerable"/"unanswerable")."""
    values, groups = list(values), list(groups)
    if len(values) != len(groups):
        raise ValueError(f"{len(values)} scores but {len(groups)} group labels")
    split: dict[str, list[float]] = {}
    for value, group in zip(values, groups, strict=True):
        split.setdefault(group, []).append(value)
    return split
