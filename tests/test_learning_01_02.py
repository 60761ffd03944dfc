"""Did the tiny runs of notebooks 01 and 02 learn? These checks read the results records of a
tiny run (see the `tiny_record` fixture in tests/conftest.py: the records `make test` just
wrote, or a run made here)."""

import math

import pytest

from course_utils.config import TINY
from course_utils.forgetting import load_probe
from course_utils.results import FineTuneRecord, LanguageModelRecord
from course_utils.training import series
from course_utils.uncertainty import Interval


@pytest.fixture(scope="module")
def first_finetune(tiny_record) -> LanguageModelRecord:
    return tiny_record("01_first_finetune")


@pytest.fixture(scope="module")
def full_finetuning(tiny_record) -> FineTuneRecord:
    return tiny_record("02_full_finetuning")


def eval_losses(record) -> list[float]:
    steps, losses = series(record.training.history, "eval_loss")
    assert len(losses) >= 2, "the run should evaluate before training and at the end"
    assert steps[0] == 0 and steps[-1] == record.settings["max_steps"]
    return losses


@pytest.mark.parametrize("notebook", ["first_finetune", "full_finetuning"])
def test_evaluation_loss_falls(notebook, request):
    record = request.getfixturevalue(notebook)
    losses = eval_losses(record)
    assert losses[-1] < losses[0], f"evaluation loss went from {losses[0]:.3f} to {losses[-1]:.3f}"


@pytest.mark.parametrize("notebook", ["first_finetune", "full_finetuning"])
def test_training_was_measured(notebook, request):
    record = request.getfixturevalue(notebook)
    training, memory = record.training, record.memory
    assert training.seconds_per_step > 0 and training.tokens_per_second > 0
    assert training.steps == record.settings["max_steps"]
    assert 0 < training.train_seconds <= record.notebook_seconds
    assert memory.peak_mib > memory.model_mib > 0
    steps = [r for r in training.history if "step_seconds" in r]
    assert [r["step"] for r in steps] == list(range(1, training.steps + 1)), "one record per step"


def test_01_trains_every_weight_and_perplexity_drops(first_finetune):
    assert first_finetune.trainable_parameters == first_finetune.parameters > 0
    before, after = first_finetune.perplexity_before, first_finetune.perplexity_after
    assert after < before, f"held-out perplexity went from {before:.2f} to {after:.2f}"


def test_02_is_judged_on_the_whole_shared_test_split(full_finetuning):
    assert full_finetuning.base.n == full_finetuning.tuned.n == TINY.test_size
    assert full_finetuning.trainable_parameters == full_finetuning.total_parameters


def test_02_scores_say_what_produced_them(full_finetuning):
    assert full_finetuning.settings["split"] == "test", "the real record is scored on test"
    for scores in (full_finetuning.base, full_finetuning.tuned):
        assert (scores.model, scores.context, scores.weights) == (
            TINY.chat_model, "gold passage", "fp32")
        assert len(scores.groups) == scores.n
        assert set(scores.by_group) == {"answerable", "unanswerable"}
        assert sum(group["n"] for group in scores.by_group.values()) == scores.n
        for metric in ("exact_match", "token_f1", "bertscore_f1"):
            assert len(scores.per_question[metric]) == scores.n
            assert math.isclose(sum(scores.per_question[metric]) / scores.n,
                                getattr(scores, metric), abs_tol=1e-6)


def test_02_token_f1_gain_is_shown_by_its_interval(full_finetuning):
    """The paired 95 % interval of tuned - base token F1 lies above 0 in the tiny run."""
    gain = full_finetuning.tuned.difference(full_finetuning.base, "token_f1")
    assert gain.low > 0, f"token F1 gain {gain.signed()}: the interval does not exclude 0"


@pytest.mark.parametrize("metric", ["exact_match", "bertscore_f1"])
def test_02_other_metrics_do_not_get_worse(full_finetuning, metric):
    """No metric shows a loss. Where the interval also contains 0, the gain is not shown by
    these few questions: reported as an expected failure with the interval, not passed."""
    gain = full_finetuning.tuned.difference(full_finetuning.base, metric)
    assert gain.high > 0, f"{metric}: fine-tuning made it worse, {gain.signed()}"
    assert gain.estimate > 0, f"{metric}: no gain at all, {gain.signed()}"
    if not gain.excludes_zero:
        pytest.xfail(f"{metric} gain {gain.signed()} over {gain.n} questions: the interval "
                     "contains 0, so this tiny run does not show a gain")


def test_02_memory_prediction_is_stored(full_finetuning):
    memory = full_finetuning.memory
    assert memory.predicted_mib > memory.model_mib
    assert memory.training_mib > 0
    assert set(memory.predicted) >= {"weights_mib", "gradients_mib", "optimizer_mib",
                                     "activations_mib", "logits_mib", "total_mib"}


PROBE_MEASURES = ("prose_nll", "trivia_accuracy", "format_bleed")


@pytest.mark.parametrize("notebook", ["first_finetune", "full_finetuning"])
def test_forgetting_was_measured(notebook, request):
    """The record holds the probe before and after training: finite numbers, consistent
    intervals, on the whole shipped probe."""
    forgetting = request.getfixturevalue(notebook).forgetting
    assert forgetting, "no forgetting block: the notebook did not run the probe"
    probe = load_probe()
    assert forgetting["n"] == {"prose": len(probe.prose), "trivia": len(probe.trivia),
                               "open_prompts": len(probe.open_prompts)}
    for side in ("base", "tuned"):
        perplexity = forgetting["perplexity"][side]
        assert math.isfinite(perplexity) and perplexity > 1
        assert math.isclose(math.log(perplexity),
                            forgetting["prose_nll"][side]["estimate"], rel_tol=1e-6)
    intervals = [Interval.from_dict(forgetting["kl_to_base"])] + [
        Interval.from_dict(forgetting[name][part])
        for name in PROBE_MEASURES for part in ("base", "tuned", "difference")]
    for interval in intervals:
        assert all(map(math.isfinite, (interval.estimate, interval.low, interval.high)))
        assert interval.low <= interval.estimate <= interval.high
    for name in ("trivia_accuracy", "format_bleed"):
        for side in ("base", "tuned"):
            assert 0 <= forgetting[name][side]["estimate"] <= 1


@pytest.mark.parametrize("notebook", ["first_finetune", "full_finetuning"])
def test_training_moved_the_next_token_distributions(notebook, request):
    """Every weight was trained, so the model's predictions on general prose moved: the mean
    KL(base || tuned) and its whole interval lie above 0."""
    kl = Interval.from_dict(request.getfixturevalue(notebook).forgetting["kl_to_base"])
    assert kl.low > 0, f"KL to the base {kl}: training left general prose untouched"
