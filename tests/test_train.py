"""The training layer: settings, the recorder, resuming from checkpoints, per-profile defaults.

Trains the packaged SmolLM2-135M for a few steps on short rows, on the CPU in fp32 so the
numbers are repeatable. To keep the tests fast only its last layers train (fewer gradients and
optimizer states to compute and checkpoint); the training layer does not care which weights
are trainable.
"""

import copy
import json

import pytest
import torch
from datasets import Dataset
from transformers import DataCollatorForSeq2Seq, TrainerCallback

from course_utils import memory
from course_utils.hardware import detect_hardware
from course_utils.models import load_causal_lm
from course_utils.profiles import TINY
from course_utils.train import (
    TrainSettings,
    checkpoint_is_complete,
    default_settings,
    find_resumable_checkpoint,
    train,
)

CPU = detect_hardware(prefer_cpu=True)
FACTS = ["The capital of France is Paris.", "Water boils at 100 degrees Celsius.",
         "The Moon orbits the Earth.", "Bees make honey from nectar.",
         "Mars is called the red planet.", "Owls hunt at night."]


@pytest.fixture(scope="module")
def base():
    """(model, tokenizer), loaded once; tests train deep copies."""
    model, tokenizer = load_causal_lm(TINY.chat_model, hardware=CPU, dtype=torch.float32)
    return model, tokenizer


def trainable_copy(model, last_layers: int):
    """A copy of the model in which only the last decoder layers and the final norm train."""
    model = copy.deepcopy(model)
    model.requires_grad_(False)
    if last_layers:
        model.model.layers[-last_layers:].requires_grad_(True)
    model.model.norm.requires_grad_(True)
    return model


def rows(tokenizer, texts) -> Dataset:
    encoded = [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    return Dataset.from_dict({"input_ids": encoded, "attention_mask": [[1] * len(e) for e in encoded],
                              "labels": [list(e) for e in encoded]})


def collator(tokenizer):
    return DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)


def quick(**changes) -> TrainSettings:
    settings = dict(learning_rate=5e-4, max_steps=4, per_device_batch_size=2,
                    gradient_accumulation_steps=1, eval_steps=0, eval_batch_size=6)
    return TrainSettings(**{**settings, **changes})


# --- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("change, message", [
    (dict(learning_rate=0), "learning_rate must be positive"),
    (dict(max_steps=-1), "max_steps must be positive"),
    (dict(eval_steps=-5), "eval_steps must be zero or positive"),
    (dict(warmup_ratio=1.5), "warmup_ratio must be in"),
    (dict(warmup_ratio=0.1, warmup_steps=3), "not both"),
    (dict(learning_rate=0.5), "far too high"),
])
def test_settings_reject_bad_values(change, message):
    with pytest.raises(ValueError, match=message):
        TrainSettings(**change)


def test_training_arguments_on_cpu(tmp_path):
    args = TrainSettings(warmup_ratio=0.1, eval_steps=0).to_training_arguments(tmp_path, CPU)
    assert args.use_cpu and not args.bf16 and not args.fp16
    assert args.report_to in ([], ["none"], "none"), "no experiment trackers"
    assert args.include_num_input_tokens_seen == "non_padding"
    assert args.warmup_steps == 0.1 and args.seed == args.data_seed == 42
    assert args.eval_strategy == "no" and args.save_strategy == "no"
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 16
    assert args.prediction_loss_only  # evaluation must not gather (rows, T, vocab) logits


def test_default_settings():
    full = default_settings("02_full_finetuning", "full")
    assert (full.per_device_batch_size, full.gradient_accumulation_steps) == (2, 8)
    assert full.learning_rate == 2e-5
    assert default_settings("01", TINY).max_steps <= 20
    with pytest.raises(ValueError, match="known notebooks"):
        default_settings("07_unknown", "tiny")


# --- training ---------------------------------------------------------------------------------


class Crash(RuntimeError):
    pass


class CrashAfterSave(TrainerCallback):
    """Simulates a session that dies right after the checkpoint of step `at` was written."""

    def __init__(self, at: int):
        self.at = at

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise Crash(f"killed after step {self.at}")


@pytest.fixture(scope="module")
def straight(base, tmp_path_factory):
    """Six uninterrupted steps on six facts, evaluated before, at step 3 and at the end."""
    model, tokenizer = base
    data = rows(tokenizer, FACTS)
    return train(trainable_copy(model, 4), tokenizer, data, data, quick(max_steps=6, eval_steps=3),
                 tmp_path_factory.mktemp("straight"), data_collator=collator(tokenizer),
                 hardware=CPU)


@pytest.fixture(scope="module")
def one_step(base, tmp_path_factory):
    """One step on two rows of different lengths, after a 1 GiB peak that came before training."""
    model, tokenizer = base
    model = trainable_copy(model, 0)  # training adds little memory beyond the 1 GiB below
    memory.reset_peak_memory("cpu")
    blob = torch.ones(2**30 // 4)  # written, so it counts in the peak; freed before training
    peak_before_training = memory.peak_memory_mib("cpu")
    del blob
    data = rows(tokenizer, ["Hi.", "A much longer sentence with many more tokens in it."])
    run = train(model, tokenizer, data, None, quick(max_steps=1),
                tmp_path_factory.mktemp("one_step"), data_collator=collator(tokenizer),
                hardware=CPU)
    return run, [len(ids) for ids in data["input_ids"]], peak_before_training


def test_loss_falls_on_a_tiny_overfit_set(straight):
    steps, eval_loss = straight.recorder.series("eval_loss")
    assert steps == [0, 3, 6], "evaluated before the first step, every 3 steps and at the end"
    assert eval_loss[-1] < 0.7 * eval_loss[0]
    summary = straight.metrics
    assert summary["steps"] == 6 and summary["last_eval_loss"] == eval_loss[-1]
    assert summary["seconds_per_step"] > 0 and summary["peak_mib"] > 0
    assert straight.resumed_from is None


def test_tokens_per_second_excludes_padding(one_step):
    run, lengths, _ = one_step
    assert lengths[0] < lengths[1]
    (record,) = run.history  # one step, one batch holding both rows
    assert record["tokens"] == sum(lengths), "counted by hand: real tokens of both rows"
    assert record["tokens"] < 2 * max(lengths), "a padded count would be larger"
    assert record["tokens_per_second"] == pytest.approx(record["tokens"] / record["step_seconds"])


def test_peak_memory_is_reset_when_training_begins(one_step):
    run, _, peak_before_training = one_step
    assert 0 < run.metrics["peak_mib"] < peak_before_training, "the old 1 GiB peak leaked in"


def test_resumed_run_ends_like_an_uninterrupted_one(base, straight, tmp_path):
    model, tokenizer = base
    data = rows(tokenizer, FACTS)
    settings = quick(max_steps=6, eval_steps=3, save_steps=3)
    kwargs = dict(data_collator=collator(tokenizer), hardware=CPU)
    with pytest.raises(Crash):
        train(trainable_copy(model, 4), tokenizer, data, data, settings, tmp_path,
              callbacks=[CrashAfterSave(3)], **kwargs)
    assert checkpoint_is_complete(tmp_path / "checkpoint-3")

    resumed = train(trainable_copy(model, 4), tokenizer, data, data, settings, tmp_path, **kwargs)

    assert resumed.resumed_from.endswith("checkpoint-3")
    steps, losses = resumed.recorder.series("loss")
    assert steps == [1, 2, 3, 4, 5, 6], "the history from before the crash is kept"
    assert losses == pytest.approx(straight.recorder.series("loss")[1], abs=1e-4)
    assert resumed.metrics["last_eval_loss"] == pytest.approx(
        straight.metrics["last_eval_loss"], abs=1e-4)


def test_incomplete_checkpoints_are_never_resumed(tmp_path):
    good = tmp_path / "checkpoint-4"
    good.mkdir()
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt"):
        (good / name).write_bytes(b"x")
    (good / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    cut = tmp_path / "checkpoint-8"  # killed while writing trainer_state.json
    cut.mkdir()
    (cut / "model.safetensors").write_bytes(b"x")
    (cut / "trainer_state.json").write_text('{"global_step": 8, "log_hist')
    with pytest.warns(UserWarning, match="incomplete checkpoint"):
        assert find_resumable_checkpoint(tmp_path) == good
    assert not cut.exists()
    assert find_resumable_checkpoint(tmp_path / "missing") is None
