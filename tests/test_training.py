"""What the course adds to the Trainer: StepStats' per-step records, the resume guard for
interrupted checkpoints, and the totals of a run.

Each test builds TrainingArguments and Trainer the way the notebooks do and trains the packaged
SmolLM2-135M for a few steps on short rows, on the CPU in fp32 so the numbers repeat. To keep
the tests fast only the model's last layers train (fewer gradients and optimizer states to
compute and checkpoint); nothing here depends on which weights are trainable.
"""

import copy
import json

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments

from course_utils import memory
from course_utils.config import TINY
from course_utils.data import qa_collator
from course_utils.hardware import detect_hardware
from course_utils.models import load_causal_lm
from course_utils.results import Training
from course_utils.training import (
    StepStats,
    checkpoint_bytes,
    checkpoint_is_complete,
    checkpoint_plan,
    logging_arguments,
    resume_checkpoint,
    series,
    training_summary,
)

CPU = detect_hardware(prefer_cpu=True)
SEED = 42
FACTS = ["The capital of France is Paris.", "Water boils at 100 degrees Celsius.",
         "The Moon orbits the Earth.", "Bees make honey from nectar.",
         "Mars is called the red planet.", "Owls hunt at night."]


@pytest.fixture(scope="module")
def base():
    """(model, tokenizer), loaded once; tests train deep copies."""
    return load_causal_lm(TINY.chat_model, hardware=detect_hardware(prefer_cpu=True),
                          dtype=torch.float32)


def trainable_copy(model, last_layers: int):
    """A copy of the model in which only the last decoder layers and the final norm train."""
    model = copy.deepcopy(model)
    model.requires_grad_(False)
    if last_layers:
        model.model.layers[-last_layers:].requires_grad_(True)
    model.model.norm.requires_grad_(True)
    return model


def rows(tokenizer, texts) -> Dataset:
    """Causal-LM rows: every token (and the end token) is a label."""
    encoded = [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    return Dataset.from_dict({"input_ids": encoded,
                              "attention_mask": [[1] * len(e) for e in encoded],
                              "labels": [list(e) for e in encoded]})


def build_trainer(model, tokenizer, train, output_dir, max_steps: int, eval_data=None,
                  eval_steps: int = 0, save_steps: int = 0, eval_on_start: bool = True,
                  callbacks=()) -> Trainer:
    """A Trainer as a notebook builds it: its own arguments plus logging_arguments, StepStats."""
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        learning_rate=5e-4,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        per_device_eval_batch_size=6,
        optim="adamw_torch",
        eval_strategy="steps" if eval_steps else "no",
        eval_steps=eval_steps or None,
        eval_on_start=bool(eval_steps) and eval_on_start,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        **logging_arguments(CPU, SEED),
    )
    return Trainer(model=model, args=args, train_dataset=train, eval_dataset=eval_data,
                   data_collator=qa_collator(tokenizer),
                   callbacks=[StepStats(CPU.device), *callbacks])


def step_records(history: list[dict]) -> list[dict]:
    return [r for r in history if "step_seconds" in r]


@pytest.fixture(scope="module")
def straight(base, tmp_path_factory):
    """Six uninterrupted steps on six facts, evaluated before, at step 3 and at the end.
    Returns (trainer, final trainable weights)."""
    model, tokenizer = base
    data = rows(tokenizer, FACTS)
    trainer = build_trainer(trainable_copy(model, 4), tokenizer, data,
                            tmp_path_factory.mktemp("straight"), max_steps=6, eval_data=data,
                            eval_steps=3)
    trainer.train()
    return trainer, trainable_weights(trainer.model)


def trainable_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


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
    trainer = build_trainer(model, tokenizer, data, tmp_path_factory.mktemp("one_step"),
                            max_steps=1)
    trainer.train()
    return trainer.state.log_history, [len(ids) for ids in data["input_ids"]], \
        peak_before_training


# --- StepStats ------------------------------------------------------------------------------


def test_loss_falls_on_a_tiny_overfit_set(straight):
    trainer, _ = straight
    steps, eval_loss = series(trainer.state.log_history, "eval_loss")
    assert steps == [0, 3, 6], "evaluated before the first step, every 3 steps and at the end"
    assert eval_loss[-1] < 0.7 * eval_loss[0]


def test_one_record_per_step_in_the_log_history(straight):
    trainer, _ = straight
    history = trainer.state.log_history
    records = step_records(history)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    for record in records:
        assert record["step_seconds"] > 0 and record["tokens"] > 0 and record["peak_mib"] > 0
        assert record["tokens_per_second"] == pytest.approx(
            record["tokens"] / record["step_seconds"])
    assert series(history, "loss")[0] == [1, 2, 3, 4, 5, 6], "the Trainer logs every step"
    (start,) = [r for r in history if "train_start_mib" in r]
    assert start["step"] == 0 and start["train_start_mib"] > 0


def test_summary_totals_the_steps(straight):
    trainer, _ = straight
    history = trainer.state.log_history
    summary = training_summary(history)
    records = step_records(history)
    assert summary["steps"] == 6
    assert summary["train_seconds"] == pytest.approx(sum(r["step_seconds"] for r in records))
    assert summary["seconds_per_step"] == pytest.approx(summary["train_seconds"] / 6)
    assert summary["tokens_seen"] == sum(r["tokens"] for r in records)
    assert summary["tokens_seen"] == trainer.state.num_input_tokens_seen
    assert summary["tokens_per_second"] == pytest.approx(
        summary["tokens_seen"] / summary["train_seconds"])
    assert summary["peak_mib"] == max(r["peak_mib"] for r in records)
    losses, evals = series(history, "loss")[1], series(history, "eval_loss")[1]
    assert (summary["first_loss"], summary["last_loss"]) == (losses[0], losses[-1])
    assert (summary["first_eval_loss"], summary["last_eval_loss"]) == (evals[0], evals[-1])
    assert summary["start_mib"] == series(history, "train_start_mib")[1][-1]
    training = Training.from_log_history(history)
    assert (training.steps, training.last_eval_loss) == (6, evals[-1])
    assert training.history == history


def test_summary_of_an_empty_history():
    summary = training_summary([])
    assert summary["steps"] == 0 and summary["train_seconds"] == 0
    assert summary["seconds_per_step"] is None and summary["tokens_per_second"] is None
    assert summary["peak_mib"] is None and summary["last_eval_loss"] is None


def test_tokens_exclude_padding(one_step):
    history, lengths, _ = one_step
    assert lengths[0] < lengths[1]
    (record,) = step_records(history)  # one step, one batch holding both rows
    assert record["tokens"] == sum(lengths), "counted by hand: real tokens of both rows"
    assert record["tokens"] < 2 * max(lengths), "a padded count would be larger"


def test_peak_memory_is_reset_when_training_begins(one_step):
    history, _, peak_before_training = one_step
    peak = training_summary(history)["peak_mib"]
    assert 0 < peak < peak_before_training, "the old 1 GiB peak leaked into the training peak"


# --- checkpoints and resuming ---------------------------------------------------------------


class Crash(RuntimeError):
    pass


class CrashAfterSave(TrainerCallback):
    """Simulates a session that dies right after the checkpoint of step `at` was written."""

    def __init__(self, at: int):
        self.at = at

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise Crash(f"killed after step {self.at}")


def test_resumed_run_ends_like_an_uninterrupted_one(base, straight, tmp_path, capsys):
    """A session dies while saving step 4 (trainer_state.json cut short); the next session
    sets that checkpoint aside, resumes from step 2 and ends with the same weights and losses
    as a run that never stopped, keeping the step records of the first session."""
    model, tokenizer = base
    data = rows(tokenizer, FACTS)

    def session(checkpoint, callbacks=()):
        # as the notebooks do: the evaluation before the first step is in a resumed history
        return build_trainer(trainable_copy(model, 4), tokenizer, data, tmp_path, max_steps=6,
                             eval_data=data, eval_steps=3, save_steps=2,
                             eval_on_start=checkpoint is None, callbacks=callbacks)

    assert resume_checkpoint(tmp_path) is None
    with pytest.raises(Crash):
        session(None, [CrashAfterSave(4)]).train()
    assert checkpoint_is_complete(tmp_path / "checkpoint-2")
    assert checkpoint_is_complete(tmp_path / "checkpoint-4")
    state = tmp_path / "checkpoint-4" / "trainer_state.json"
    state.write_text(state.read_text()[:300])  # killed while writing the state

    with pytest.warns(UserWarning, match="checkpoint-4 is incomplete"):
        checkpoint = resume_checkpoint(tmp_path)
    assert checkpoint == str(tmp_path / "checkpoint-2")
    assert (tmp_path / "incomplete-checkpoint-4").is_dir()
    capsys.readouterr()
    trainer = session(checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)
    said = capsys.readouterr().out
    assert f"Checkpoints: every 2 steps into {tmp_path}, all kept." in said
    assert "Resuming from step 2." in said, "StepStats says where the run resumes"

    history = trainer.state.log_history
    assert [r["step"] for r in step_records(history)] == [1, 2, 3, 4, 5, 6], \
        "the records of steps 1-2 come from the first session, once each"
    straight_trainer, straight_weights = straight
    steps, losses = series(history, "loss")
    assert steps == [1, 2, 3, 4, 5, 6]
    assert losses == pytest.approx(series(straight_trainer.state.log_history, "loss")[1],
                                   abs=1e-4)
    eval_steps, eval_losses = series(history, "eval_loss")
    assert eval_steps == [0, 3, 6]
    assert eval_losses == pytest.approx(series(straight_trainer.state.log_history,
                                               "eval_loss")[1], abs=1e-4)
    weights = trainable_weights(trainer.model)
    assert weights.keys() == straight_weights.keys()
    for name, value in weights.items():
        torch.testing.assert_close(value, straight_weights[name], atol=1e-4, rtol=1e-4,
                                   msg=name)


def complete_checkpoint(folder, step: int):
    """A checkpoint folder whose files are whole (small, but in the formats Trainer writes)."""
    from safetensors.torch import save_file

    folder.mkdir()
    save_file({"weight": torch.zeros(4)}, folder / "model.safetensors")
    for name in ("optimizer.pt", "scheduler.pt"):
        torch.save({"state": {}}, folder / name)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


@pytest.mark.parametrize("damage", ["truncated state", "no state", "state of another step",
                                    "no optimizer", "no weights"])
def test_an_incomplete_checkpoint_is_set_aside(tmp_path, damage):
    good = complete_checkpoint(tmp_path / "checkpoint-4", 4)
    cut = complete_checkpoint(tmp_path / "checkpoint-8", 8)
    if damage == "truncated state":
        (cut / "trainer_state.json").write_text('{"global_step": 8, "log_hist')
    elif damage == "no state":
        (cut / "trainer_state.json").unlink()
    elif damage == "state of another step":
        (cut / "trainer_state.json").write_text(json.dumps({"global_step": 6}))
    elif damage == "no optimizer":
        (cut / "optimizer.pt").unlink()
    else:
        (cut / "model.safetensors").unlink()
    assert checkpoint_is_complete(good) and not checkpoint_is_complete(cut)
    with pytest.warns(UserWarning, match="checkpoint-8 is incomplete .* set aside as "
                                         "incomplete-checkpoint-8"):
        assert resume_checkpoint(tmp_path) == str(good)
    assert not cut.exists() and (tmp_path / "incomplete-checkpoint-8").is_dir()
    assert resume_checkpoint(tmp_path) == str(good), "set aside once, never picked again"


def test_adapter_checkpoints_count_as_complete(tmp_path):
    folder = complete_checkpoint(tmp_path / "checkpoint-3", 3)
    (folder / "model.safetensors").rename(folder / "adapter_model.safetensors")
    assert checkpoint_is_complete(folder)


def test_nothing_to_resume(tmp_path):
    assert resume_checkpoint(tmp_path / "missing") is None
    assert resume_checkpoint(tmp_path) is None
    (tmp_path / "checkpoint-2").mkdir()  # only an empty one
    with pytest.warns(UserWarning, match="incomplete"):
        assert resume_checkpoint(tmp_path) is None
    (tmp_path / "checkpoint-2").mkdir()  # a second one that failed the same way
    with pytest.warns(UserWarning, match="set aside as incomplete-checkpoint-2-"):
        assert resume_checkpoint(tmp_path) is None


def test_logging_arguments_carry_data_only(tmp_path):
    arguments = logging_arguments(CPU, seed=7)
    args = TrainingArguments(output_dir=str(tmp_path), **arguments)
    assert args.use_cpu and not args.bf16 and not args.fp16
    assert args.report_to in ([], ["none"], "none"), "no experiment trackers"
    assert args.include_num_input_tokens_seen == "non_padding"
    assert args.seed == args.data_seed == 7 and args.logging_steps == 1
    assert args.prediction_loss_only  # evaluation must not gather (rows, T, vocab) logits
    hyperparameters = {"learning_rate", "max_steps", "per_device_train_batch_size",
                       "gradient_accumulation_steps", "warmup_steps", "optim", "bf16", "fp16"}
    assert not hyperparameters & set(arguments), "the notebooks set those in view"


# --- where checkpoints go and how large they are -----------------------------------------------


class Adapted(torch.nn.Module):
    """A stand-in for a PEFT model: a frozen base, a trainable adapter, `peft_config`."""

    peft_config = {"default": None}

    def __init__(self):
        super().__init__()
        self.base = torch.nn.Linear(1000, 1000).requires_grad_(False)   # 1,001,000 frozen
        self.adapter = torch.nn.Linear(1000, 8, bias=False)             # 8,000 trainable


def test_checkpoint_bytes_count_weights_and_adamw_states():
    model = torch.nn.Linear(1000, 1000)                                  # 1,001,000 fp32
    assert checkpoint_bytes(model, "adamw_torch") == (4_004_000, 8_008_000)
    assert checkpoint_bytes(model, "paged_adamw_8bit") == (4_004_000, 2_002_000)
    assert checkpoint_bytes(model, "sgd") == (4_004_000, None)
    assert checkpoint_bytes(model.to(torch.bfloat16), "adamw_torch") == (2_002_000, 4_004_000)
    tied = torch.nn.Sequential(torch.nn.Linear(100, 100, bias=False),
                               torch.nn.Linear(100, 100, bias=False))
    tied[1].weight = tied[0].weight
    assert checkpoint_bytes(tied)[0] == 40_000, "a tied weight is saved once"
    assert checkpoint_bytes(Adapted(), "adamw_torch") == (32_000, 64_000), \
        "a PEFT checkpoint holds the adapters and their states only"


def test_checkpoint_plan_says_where_how_many_and_how_large(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path / "runs" / "02"), save_strategy="steps",
                             save_steps=50, save_total_limit=1, optim="adamw_torch",
                             report_to="none", use_cpu=True)
    plan = checkpoint_plan(args, torch.nn.Linear(1000, 1000))
    assert plan.startswith(f"Checkpoints: every 50 steps into {tmp_path / 'runs' / '02'}, "
                           "the newest 1 kept (save_total_limit).")
    assert "Each is about 12 MB (weights 4 MB, optimizer states 8 MB)" in plan
    assert "up to 24 MB at once" in plan and "WARNING" not in plan
    assert "Resuming from step 50." in checkpoint_plan(args, None, resumed_step=50)
    off = TrainingArguments(output_dir=str(tmp_path), save_strategy="no", report_to="none",
                            use_cpu=True)
    assert checkpoint_plan(off).startswith("Checkpoints: none in this run")


def test_checkpoint_plan_warns_when_the_disk_is_short(tmp_path, monkeypatch):
    import shutil

    from course_utils import training

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(training.shutil, "disk_usage",
                        lambda path: usage._replace(free=10_000_000))
    args = TrainingArguments(output_dir=str(tmp_path / "not-yet"), save_strategy="steps",
                             save_steps=5, save_total_limit=2, optim="adamw_torch",
                             report_to="none", use_cpu=True)
    plan = checkpoint_plan(args, torch.nn.Linear(1000, 1000))
    assert f"WARNING: {tmp_path} has 10 MB free" in plan, "the nearest existing folder"
    assert "up to 36 MB at once" in plan


def test_checkpoint_plan_names_kaggles_quota():
    """A full fine-tuning checkpoint of a 0.6B-parameter model with AdamW states is ~7 GB;
    Kaggle keeps /kaggle/working to 20 GB (the model here lives on the meta device: shapes only)."""
    model = torch.nn.Linear(20_000, 30_000, bias=False, device="meta")  # 0.6 B parameters
    args = TrainingArguments(output_dir="/kaggle/working/runs/full/02_full_finetuning",
                             save_strategy="steps", save_steps=50, save_total_limit=1,
                             optim="adamw_torch", report_to="none", use_cpu=True)
    plan = checkpoint_plan(args, model)
    assert "Each is about 7.2 GB (weights 2.4 GB, optimizer states 4.8 GB)" in plan
    assert "up to 14.4 GB at once" in plan
    assert "Kaggle keeps /kaggle/working to 20.0 GB in all." in plan
