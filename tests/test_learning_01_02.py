"""Did the tiny runs of notebooks 01 and 02 learn? These tests read the results files the
notebooks wrote (results/tiny/<notebook>.json), so run the notebooks first:

    python -m course_utils run --profile tiny --only 01 02
"""

import pytest

from course_utils.plots import loss_series
from course_utils.profiles import TINY
from course_utils.results import load_results


def tiny_results(notebook: str) -> dict:
    try:
        results = load_results(notebook, "tiny")
    except FileNotFoundError as error:
        pytest.fail(f"{error}\nRun the notebook first: python -m course_utils run --profile tiny "
                    f"--only {notebook[:2]}", pytrace=False)
    assert results["profile"] == "tiny"
    return results


@pytest.fixture(scope="module")
def first_finetune():
    return tiny_results("01_first_finetune")


@pytest.fixture(scope="module")
def full_finetuning():
    return tiny_results("02_full_finetuning")


def eval_losses(results: dict) -> list[float]:
    steps, losses = loss_series(results["extra"]["history"], "eval_loss")
    assert len(losses) >= 2, "the run should evaluate before training and at the end"
    assert steps[0] == 0 and steps[-1] == results["hyperparameters"]["max_steps"]
    return losses


@pytest.mark.parametrize("notebook", ["first_finetune", "full_finetuning"])
def test_evaluation_loss_falls(notebook, request):
    results = request.getfixturevalue(notebook)
    losses = eval_losses(results)
    assert losses[-1] < losses[0], f"evaluation loss went from {losses[0]:.3f} to {losses[-1]:.3f}"


@pytest.mark.parametrize("notebook", ["first_finetune", "full_finetuning"])
def test_training_was_measured(notebook, request):
    results = request.getfixturevalue(notebook)
    timings, memory = results["timings"], results["memory"]
    assert timings["seconds_per_step"] > 0 and timings["tokens_per_second"] > 0
    assert timings["train_seconds"] > 0 and timings["notebook_seconds"] >= timings["train_seconds"]
    assert memory["peak_mib"] > memory["model_footprint_mib"] > 0
    extra = results["extra"]
    assert extra["trainable_parameters"] == extra["total_parameters"] > 0, "full fine-tuning"


def test_01_heldout_perplexity_drops(first_finetune):
    metrics = first_finetune["metrics"]
    assert metrics["perplexity_after"] < metrics["perplexity_before"], (
        f"held-out perplexity went from {metrics['perplexity_before']:.2f} "
        f"to {metrics['perplexity_after']:.2f}")


def test_02_is_judged_on_the_whole_shared_test_split(full_finetuning):
    metrics = full_finetuning["metrics"]
    assert metrics["base"]["n"] == metrics["finetuned"]["n"] == TINY.test_size


@pytest.mark.parametrize("metric", ["token_f1", "bertscore_f1"])
def test_02_finetuned_beats_base(full_finetuning, metric):
    base = full_finetuning["metrics"]["base"][metric]
    tuned = full_finetuning["metrics"]["finetuned"][metric]
    assert tuned > base, f"{metric}: base {base:.3f}, fine-tuned {tuned:.3f}"


def test_02_memory_prediction_is_stored(full_finetuning):
    memory = full_finetuning["memory"]
    assert memory["predicted_peak_mib"] > memory["model_footprint_mib"]
    assert memory["training_mib"] > 0
