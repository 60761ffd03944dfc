"""Tuning on validation: the tool runs a notebook per value on the validation questions, picks
the best, and refuses a notebook that would score on the test split."""

from __future__ import annotations

import json

import nbformat
import pytest

from course_tools import tune

NOTEBOOK = '''
import os
from course_utils.results import FineTuneRecord, Memory, Scores, Training, save_record

n = 30
# a made-up method whose score peaks at LEARNING_RATE = 3e-3
quality = 0.8 - abs(LEARNING_RATE - 3e-3) * 100
per_question = [min(1.0, max(0.0, quality + ((i * 7) % 5 - 2) / 20)) for i in range(n)]
scores = Scores(n=n, exact_match=0.0, token_f1=sum(per_question) / n, bertscore_precision=0,
                bertscore_recall=0, bertscore_f1=0, bertscore_rescaled=False, bertscore_model="x",
                per_question={"token_f1": per_question})
save_record(FineTuneRecord(
    notebook="02_fake", profile=PROFILE, models={}, notebook_seconds=1.0,
    settings={"split": SPLIT if HONOURS_SPLIT else "test", "learning_rate": LEARNING_RATE},
    method="fake", base=scores, tuned=scores, trainable_parameters=1, total_parameters=1,
    training=Training(steps=1, seconds_per_step=1.0, tokens_per_second=1.0, train_seconds=1.0,
                      first_eval_loss=2.0, last_eval_loss=1.0 + abs(LEARNING_RATE - 3e-3) * 100,
                      history=[]),
    memory=Memory(device="cpu", model_mib=1.0), examples=[]))
'''


@pytest.fixture
def fake_notebooks(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                           "display_name": "Python 3"},
                                            "language_info": {"name": "python"}})
    parameters = nbformat.v4.new_code_cell(
        'PROFILE = "tiny"\nSPLIT = "test"\nLEARNING_RATE = 1e-3\nHONOURS_SPLIT = True')
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [parameters, nbformat.v4.new_code_cell(NOTEBOOK)]
    nbformat.write(nb, folder / "02_fake.ipynb")
    return folder


@pytest.mark.slow
def test_tuning_picks_the_best_value_on_validation(fake_notebooks, tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path / "real-results"))
    result = tune.tune("02", "LEARNING_RATE", [1e-3, 3e-3, 1e-2], notebooks_dir=fake_notebooks,
                       out_dir=tmp_path / "tuning")
    assert result["chosen"] == 3e-3 and result["split"] == "validation"
    saved = json.loads((tmp_path / "tuning" / "tiny" / "02_fake-LEARNING_RATE.json").read_text())
    assert saved == result
    worse = [run for run in saved["runs"] if run["value"] != 3e-3]
    assert all(run["difference_from_best"]["estimate"] < 0 for run in worse)
    assert tune.chosen("02_fake", "LEARNING_RATE", out_dir=tmp_path / "tuning") == 3e-3
    assert not (tmp_path / "real-results").exists()          # real results untouched
    by_loss = tune.tune("02", "LEARNING_RATE", [1e-3, 3e-3], metric="eval_loss",
                        notebooks_dir=fake_notebooks, out_dir=tmp_path / "tuning")
    assert by_loss["chosen"] == 3e-3                          # lower loss is better
    with pytest.raises(ValueError, match="ignored SPLIT='validation'"):
        tune.tune("02", "LEARNING_RATE", [1e-3, 3e-3], extra={"HONOURS_SPLIT": False},
                  notebooks_dir=fake_notebooks, out_dir=tmp_path / "tuning")


def test_values_are_parsed_and_two_are_needed(fake_notebooks):
    assert [tune._parse(v) for v in ("3e-3", "2", "true", "all-linear")] == \
        [0.003, 2, True, "all-linear"]
    with pytest.raises(ValueError, match="at least two values"):
        tune.tune("02", "LEARNING_RATE", [1e-3], notebooks_dir=fake_notebooks)


def test_simplest_first_takes_the_first_value_the_validation_set_cannot_tell_from_the_best():
    def run(value, mean, low, high=None):
        gap = None if low is None else {"estimate": 0.01, "low": low, "high": high}
        return {"value": value, "token_f1": mean, "difference_from_best": gap}
    runs = [run(1, 0.171, -0.02, 0.04), run(2, 0.180, None), run(3, 0.166, -0.01, 0.05)]
    assert tune.choose(runs, "token_f1")["value"] == 2                       # best mean
    assert tune.choose(runs, "token_f1", simplest_first=True)["value"] == 1  # gap not seen
    runs[0]["difference_from_best"] = {"estimate": 0.1, "low": 0.05, "high": 0.15}
    assert tune.choose(runs, "token_f1", simplest_first=True)["value"] == 2  # 1 is shown worse


def recipe_cites_its_tuning_run(notebook: str, setting: str, stem: str, parameter: str,
                                decimals: int) -> dict:
    """Assert that RECIPES[notebook]["tiny"][setting] holds the value the saved tuning run
    (course_tools/tuning/tiny/<stem>-<parameter>.json) chose on validation token F1, and that
    its reason cites that file and every run's mean (to `decimals`), never the test split.
    Returns the saved run."""
    from course_utils.config import RECIPES

    value, reason = RECIPES[notebook]["tiny"][setting]
    assert value == tune.chosen(stem, parameter)
    saved = json.loads((tune.TUNING_DIR / "tiny" / f"{stem}-{parameter}.json").read_text())
    assert saved["split"] == "validation" and saved["metric"] == "token_f1"
    assert f"{stem}-{parameter}.json" in reason and "test split" not in reason
    means = [f"{run['token_f1']:.{decimals}f}" for run in saved["runs"]]
    assert all(mean in reason for mean in means), (means, reason)
    return saved


def test_notebook_05s_tiny_top_k_is_the_one_chosen_on_validation():
    """RECIPES["05"]["tiny"]["k"] holds the value the saved tuning run chose on validation
    (course_tools/tuning/tiny/05_rag-TOP_K.json), and its reason cites that file."""
    saved = recipe_cites_its_tuning_run("05", "k", "05_rag", "TOP_K", decimals=3)
    assert saved["rule"].startswith("simplest first")
    assert [run["value"] for run in saved["runs"]] == [1, 2, 3]


@pytest.mark.parametrize("notebook, stem", [("02", "02_full_finetuning"), ("03", "03_lora"),
                                            ("04", "04_qlora")])
def test_tiny_learning_rates_are_the_ones_chosen_on_validation(notebook, stem):
    """The tiny learning rates of 02-04 are the values their saved tuning runs chose on the
    validation questions (course_tools/tuning/tiny/<stem>-LEARNING_RATE.json), and each reason
    cites that file and its measured means, never the test split."""
    saved = recipe_cites_its_tuning_run(notebook, "learning_rate", stem, "LEARNING_RATE",
                                        decimals=2)
    assert len(saved["runs"]) >= 3 and all(run["n"] == 24 for run in saved["runs"])
