"""Did the tiny runs of notebooks 01 and 02 learn? These checks read the results records of a
tiny run (see the `tiny_record` fixture in tests/conftest.py: the records `make test` just
wrote, or a run made here)."""

import pytest

from course_utils.config import TINY
from course_utils.results import FineTuneRecord, LanguageModelRecord
from course_utils.training import series


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


@pytest.mark.parametrize("metric", ["token_f1", "bertscore_f1"])
def test_02_finetuned_beats_base(full_finetuning, metric):
    base = getattr(full_finetuning.base, metric)
    tuned = getattr(full_finetuning.tuned, metric)
    assert tuned > base, f"{metric}: base {base:.3f}, fine-tuned {tuned:.3f}"


def test_02_memory_prediction_is_stored(full_finetuning):
    memory = full_finetuning.memory
    assert memory.predicted_mib > memory.model_mib
    assert memory.training_mib > 0
    assert set(memory.predicted) >= {"weights_mib", "gradients_mib", "optimizer_mib",
                                     "activations_mib", "logits_mib", "total_mib"}
