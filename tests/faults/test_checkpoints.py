"""Checkpoints under faults: files cut short at random offsets, missing files, garbage state,
a session killed with SIGKILL while writing a checkpoint, and a resume with other settings.

A damaged checkpoint is never chosen: it is set aside (renamed incomplete-checkpoint-N, its
files kept) with a warning that names it and what is wrong, and the previous complete one is
resumed; with none left training starts fresh, with a warning. A resume with other settings
stops before it trains, naming the differences and how to start fresh. The run is a tiny,
randomly initialised GPT-2 trained with the Trainer as the notebooks build it.
"""

import json
import shutil
import warnings

import pytest
import torch
from fault_helpers import cut_short, run_killed, tiny_gpt2, tiny_trainer, token_rows

from course_utils.training import (
    ResumeSettingsError,
    checkpoint_problem,
    checkpoint_settings,
    resume_checkpoint,
)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A run of three steps with a checkpoint after each; tests work on copies of it."""
    folder = tmp_path_factory.mktemp("finished") / "run"
    tiny_trainer(folder).train()
    return folder


@pytest.fixture
def run(finished_run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(finished_run, folder)
    return folder


def snapshot(folder):
    """Every file under folder with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def weights(folder):
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def resume_to_the_end(folder, checkpoint):
    """Resume with the settings of finished_run; returns the trainer after its last step."""
    trainer = tiny_trainer(folder)
    trainer.train(resume_from_checkpoint=checkpoint)
    return trainer


def expect_fallback(run, problem: str):
    """checkpoint-3 is damaged: it is set aside with its files, checkpoint-2 is chosen."""
    damaged_files = {p.name: p.stat().st_size for p in (run / "checkpoint-3").iterdir()}
    kept = snapshot(run / "checkpoint-2")
    with pytest.warns(UserWarning, match=rf"checkpoint-3 is incomplete \({problem}.*set aside as "
                                         r"incomplete-checkpoint-3"):
        chosen = resume_checkpoint(run)
    assert chosen == str(run / "checkpoint-2")
    aside = run / "incomplete-checkpoint-3"
    assert {p.name: p.stat().st_size for p in aside.iterdir()} == damaged_files, \
        "the damaged checkpoint is kept as it was"
    assert snapshot(run / "checkpoint-2") == kept
    return chosen


@pytest.mark.parametrize("name, seed", [("model.safetensors", 1), ("optimizer.pt", 2),
                                        ("scheduler.pt", 3), ("rng_state.pth", 4)])
def test_a_file_cut_short_is_not_resumed(run, name, seed):
    cut_short(run / "checkpoint-3" / name, seed)
    assert checkpoint_problem(run / "checkpoint-3").startswith(f"{name} is cut short")
    expect_fallback(run, f"{name} is cut short")


@pytest.mark.parametrize("name, problem", [("scheduler.pt", "scheduler.pt is missing"),
                                           ("model.safetensors", "it holds no weights file")])
def test_a_missing_file_is_not_resumed(run, name, problem):
    (run / "checkpoint-3" / name).unlink()
    expect_fallback(run, problem)


@pytest.mark.parametrize("garbage", [b"", b"[]", b"\x00\xff\xfe not json", b'{"global_step": "3"}',
                                     b"{\"global_step\": 3, \"log_history\": [{\"loss\": 4.2"])
def test_a_garbage_trainer_state_is_not_resumed(run, garbage):
    (run / "checkpoint-3" / "trainer_state.json").write_bytes(garbage)
    expect_fallback(run, "trainer_state.json is")


def test_when_every_checkpoint_is_damaged_training_starts_fresh_with_a_warning(run):
    for step, name in ((1, "model.safetensors"), (2, "optimizer.pt"), (3, "trainer_state.json")):
        cut_short(run / f"checkpoint-{step}" / name, seed=step)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resume_checkpoint(run) is None
    said = [str(w.message) for w in caught]
    assert len(said) == 4 and "No complete checkpoint left" in said[-1]
    assert "training starts from the beginning" in said[-1]
    assert sorted(p.name for p in run.iterdir()) == [f"incomplete-checkpoint-{s}" for s in (1, 2, 3)]


def test_a_checkpoint_killed_while_being_written_is_skipped_and_the_run_ends_as_if_uninterrupted(
        finished_run, tmp_path):
    """SIGKILL while optimizer.pt of step 3 is half written: the next session resumes from
    step 2 and ends with the weights of the run that was never interrupted."""
    folder = tmp_path / "run"
    script = f"""
import io, os, signal, torch
from fault_helpers import tiny_trainer
real_save = torch.save
def dying_save(obj, target, *args, **kwargs):
    if str(target).endswith(os.path.join("checkpoint-3", "optimizer.pt")):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        with open(target, "wb") as handle:
            handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, target, *args, **kwargs)
torch.save = dying_save
tiny_trainer({str(folder)!r}).train()
"""
    result = run_killed(script)
    assert result.returncode == -9, result.stderr[-2000:]
    assert not (folder / "checkpoint-3" / "trainer_state.json").exists()
    with pytest.warns(UserWarning, match=r"checkpoint-3 is incomplete \(trainer_state.json is "
                                         r"missing"):
        chosen = resume_checkpoint(folder)
    assert chosen == str(folder / "checkpoint-2")
    assert (folder / "incomplete-checkpoint-3" / "optimizer.pt").is_file()
    trainer = resume_to_the_end(folder, chosen)
    assert trainer.state.global_step == 3
    resumed, straight = weights(folder / "checkpoint-3"), weights(finished_run / "checkpoint-3")
    assert resumed.keys() == straight.keys()
    for name in resumed:
        torch.testing.assert_close(resumed[name], straight[name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("changes, named", [
    ({"learning_rate": 2e-3}, "learning_rate: 0.001 in the checkpoint, 0.002 now"),
    ({"max_steps": 2}, "max_steps: 3 in the checkpoint, 2 now"),
    ({"per_device_train_batch_size": 2}, "per_device_train_batch_size: 4 in the checkpoint, 2 now"),
    ({"gradient_accumulation_steps": 2}, "gradient_accumulation_steps: 1 in the checkpoint, 2 now"),
    ({"seed": 7}, "seed: 42 in the checkpoint, 7 now"),
    ({"data": "other rows"}, "train_data: "),
    ({"model": "other name"}, "model: 'tiny-gpt2' in the checkpoint, 'other-gpt2' now"),
    ({"model": "frozen embeddings"}, "trainable_parameters: 29600 in the checkpoint, 26496 now"),
])
def test_a_resume_with_other_settings_refuses_and_changes_nothing(run, changes, named):
    changes = dict(changes)
    data = {"other rows": token_rows(seed=1), "more rows": token_rows(n=16)}.get(
        changes.pop("data", None))
    model, change = tiny_gpt2(), changes.pop("model", None)
    if change == "other name":
        model.config._name_or_path = "other-gpt2"
    elif change == "frozen embeddings":  # another method: the same weights, fewer trained
        model.transformer.wte.requires_grad_(False)
    before = snapshot(run)
    checkpoint = resume_checkpoint(run)
    with pytest.raises(ResumeSettingsError) as error:  # when the Trainer is built, or trains
        tiny_trainer(run, model=model, data=data, **changes).train(resume_from_checkpoint=checkpoint)
    message = str(error.value)
    assert f"Cannot resume {run / 'checkpoint-3'}" in message and named in message
    assert "RESUME = False" in message and str(run) in message, "it says how to start fresh"
    assert snapshot(run) == before, "nothing trained, nothing written, nothing deleted"


def test_a_resume_with_another_lora_rank_refuses(tmp_path):
    from peft import LoraConfig, get_peft_model

    def adapted(rank):
        return get_peft_model(tiny_gpt2(), LoraConfig(r=rank, lora_alpha=2 * rank,
                                                      target_modules=["c_attn"],
                                                      task_type="CAUSAL_LM"))

    tiny_trainer(tmp_path, model=adapted(4), max_steps=2).train()
    recorded = checkpoint_settings(tmp_path / "checkpoint-2")
    assert recorded["lora"]["r"] == 4 and recorded["lora"]["target_modules"] == ["c_attn"]
    with pytest.raises(ResumeSettingsError, match=r"lora: \{.*'r': 4.*in the checkpoint, .*'r': 8"):
        tiny_trainer(tmp_path, model=adapted(8), max_steps=2).train(
            resume_from_checkpoint=resume_checkpoint(tmp_path))


def test_a_resume_with_the_same_settings_goes_on(run):
    """The check lets the run it protects through: checkpoint-3 removed, step 3 is trained
    again from checkpoint-2."""
    shutil.rmtree(run / "checkpoint-3")
    trainer = resume_to_the_end(run, resume_checkpoint(run))
    assert trainer.state.global_step == 3 and checkpoint_problem(run / "checkpoint-3") is None


def test_a_checkpoint_that_records_no_settings(run):
    """Saved before settings were recorded: resumed with a warning, unless its own state
    shows other steps or batch size."""
    for step in (1, 2, 3):
        path = run / f"checkpoint-{step}" / "trainer_state.json"
        state = json.loads(path.read_text())
        del state["stateful_callbacks"]["StepStats"]
        path.write_text(json.dumps(state))
    with pytest.raises(ResumeSettingsError, match="max_steps: 3 in the checkpoint, 4 now"):
        tiny_trainer(run, max_steps=4).train(resume_from_checkpoint=resume_checkpoint(run))
    shutil.rmtree(run / "checkpoint-3")
    with pytest.warns(UserWarning, match="checkpoint-2 records no training settings"):
        trainer = resume_to_the_end(run, resume_checkpoint(run))
    assert trainer.state.global_step == 3
    assert checkpoint_settings(run / "checkpoint-3")["learning_rate"] == 1e-3, \
        "the new checkpoint records them"
