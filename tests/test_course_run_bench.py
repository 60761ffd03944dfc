"""benchmarks/course_run.py: both runs side by side, their ratio and the 6-minute target."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import course_run  # noqa: E402


def test_compare_pairs_each_notebook_and_judges_the_total_with_the_cache():
    without = {"01.ipynb": 100.0, "02.ipynb": 200.0, "03.ipynb": 100.0}
    with_cache = {"01.ipynb": 100.0, "02.ipynb": 150.0, "03.ipynb": 50.0}
    result = course_run.compare(without, with_cache)
    assert [row["ratio"] for row in result["notebooks"]] == [1.0, 0.75, 0.5]
    assert result["total"] == {"without_cache_s": 400.0, "with_cache_s": 300.0, "ratio": 0.75}
    assert result["target"]["met"]  # 300 s <= 6 minutes
    slow = course_run.compare(without, {name: 150.0 for name in with_cache})
    assert not slow["target"]["met"]  # 450 s
    printed = course_run.table(slow)
    assert "MISSED" in printed and "02.ipynb" in printed and "0.75" in printed


def test_a_notebook_missing_from_one_run_is_left_out_of_both():
    result = course_run.compare({"01.ipynb": 10.0, "02.ipynb": 20.0}, {"01.ipynb": 5.0})
    assert [row["notebook"] for row in result["notebooks"]] == ["01.ipynb"]
    assert result["total"]["without_cache_s"] == 10.0
