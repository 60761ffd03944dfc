"""Bootstrap intervals: reproducible, centred on the estimate, and paired where it matters."""

from __future__ import annotations

import numpy as np
import pytest

from course_utils.uncertainty import Interval, mean_interval, paired_difference, split_by


def test_seeded_and_contains_the_estimate():
    scores = np.random.default_rng(1).random(50)
    first, second = mean_interval(scores), mean_interval(scores)
    assert first == second
    assert first.low <= first.estimate <= first.high
    assert first.estimate == pytest.approx(scores.mean())
    assert mean_interval(scores, seed=7) != first


def test_pairing_cancels_question_difficulty():
    """Question difficulty varies a lot, the method's gain is small and steady: the paired
    interval sees the gain, two separate intervals overlap."""
    rng = np.random.default_rng(0)
    difficulty = rng.random(40)
    before = difficulty
    after = difficulty + 0.03 + rng.normal(0, 0.01, 40)
    paired = paired_difference(before, after)
    assert paired.excludes_zero and paired.low > 0
    separate_before, separate_after = mean_interval(before), mean_interval(after)
    assert separate_after.low < separate_before.high                  # they overlap
    assert (paired.high - paired.low) < 0.2 * (separate_after.high - separate_after.low)


def test_no_difference_gives_an_interval_around_zero():
    rng = np.random.default_rng(3)
    before = rng.integers(0, 2, 40).astype(float)
    after = before.copy()
    rng.shuffle(after[:20])          # same mean, shuffled on half the questions
    interval = paired_difference(before, after)
    assert interval.low <= 0 <= interval.high and not interval.excludes_zero
    assert paired_difference(before, before).to_dict() == {
        "estimate": 0.0, "low": 0.0, "high": 0.0, "n": 40, "confidence": 0.95,
        "excludes_zero": False}


def test_text_and_round_trip():
    interval = Interval(0.061, -0.012, 0.135, 40)
    assert interval.signed() == "+0.061 [-0.012, +0.135]"
    assert str(interval) == "0.061 [-0.012, 0.135]"
    assert Interval.from_dict(interval.to_dict()) == interval


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="same questions: 3 scores before, 2 after"):
        paired_difference([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="non-empty"):
        mean_interval([])
    with pytest.raises(ValueError, match="NaN"):
        mean_interval([0.5, float("nan")])
    with pytest.raises(ValueError, match="at least 100"):
        mean_interval([1.0, 0.0], n_resamples=10)
    assert split_by([1, 0, 1], ["a", "u", "a"]) == {"a": [1, 1], "u": [0]}
    with pytest.raises(ValueError, match="3 scores but 2 group labels"):
        split_by([1, 0, 1], ["a", "u"])
