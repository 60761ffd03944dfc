"""What a tiny run of notebooks 03 (LoRA) and 04 (QLoRA) must show, read from their results
records (see the `tiny_record` fixture in tests/conftest.py)."""

from __future__ import annotations

import pytest

from course_utils.config import TINY
from course_utils.results import FineTuneRecord

NOTEBOOKS = ("03_lora", "04_qlora")


@pytest.fixture(scope="module")
def records(tiny_record) -> dict[str, FineTuneRecord]:
    return {stem: tiny_record(stem) for stem in NOTEBOOKS}


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_records_have_the_shared_structure(records, stem):
    record = records[stem]
    assert isinstance(record, FineTuneRecord) and record.profile == "tiny"
    assert record.base.n == record.tuned.n == TINY.test_size  # the whole shared test split
    memory, training = record.memory, record.training
    assert memory.peak_mib > 0 and memory.predicted_mib > 0 and memory.model_mib > 0
    assert training.seconds_per_step > 0 and training.tokens_per_second > 0
    assert 0 < training.train_seconds <= record.notebook_seconds
    assert record.details["lora_rank"] > 0 and record.details["adapter_mib"] > 0
    assert any("loss" in entry for entry in training.history)


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_adapter_method_beats_its_base_model(records, stem):
    base, tuned = records[stem].base, records[stem].tuned
    assert tuned.token_f1 > base.token_f1, (base.token_f1, tuned.token_f1)
    assert tuned.bertscore_f1 > base.bertscore_f1, (base.bertscore_f1, tuned.bertscore_f1)
    training = records[stem].training
    assert training.last_eval_loss < training.first_eval_loss


def test_qlora_beats_the_unquantized_base_too(records):
    unquantized, tuned = records["03_lora"].base, records["04_qlora"].tuned
    assert tuned.token_f1 > unquantized.token_f1
    assert tuned.bertscore_f1 > unquantized.bertscore_f1


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_only_a_few_percent_of_the_parameters_train(records, stem):
    record = records[stem]
    assert record.trainable_parameters == record.details["expected_trainable_parameters"]
    # r=32 adapters: on q/k/v/o (LoRA) 2.7 %, on all linear layers (QLoRA) 6.8 % of 135M
    assert record.trainable_parameters < 0.10 * record.total_parameters


def test_lora_adapter_and_merge(records):
    details = records["03_lora"].details
    assert details["start_logit_difference"] == 0.0          # B = 0: the base model at step 0
    assert details["merge_logit_difference"] < 1e-3          # merged == adapted (fp32)
    assert details["adapter_mib"] < 0.1 * details["full_checkpoint_mib"]
    sweep = details["rank_sweep"]
    assert len(sweep) >= 2 and len({point["r"] for point in sweep}) == len(sweep)


def test_qlora_footprint_is_at_most_035_of_fp32(records):
    footprints = records["04_qlora"].details["footprints_mib"]
    assert set(footprints) == {"32bit", "16bit", "8bit", "4bit"}
    assert footprints["4bit"] <= 0.35 * footprints["32bit"]
    assert footprints["4bit"] < footprints["8bit"] < footprints["16bit"] < footprints["32bit"]


def test_qlora_merge_into_16_bit_keeps_what_training_taught(records):
    details = records["04_qlora"].details
    check = details["merge_check"]
    # the merged 16-bit model is close to, not identical with, the 4-bit model plus adapter:
    # it must still answer better than the base model did on the same questions
    assert check["token_f1_merged"] > check["token_f1_base"], check
    assert check["agreement"] > 0, check
    requantized = details["requantization"]
    assert requantized["rounding_to_update"] > 1     # NF4's steps dwarf the update
    assert requantized["update_error"] > 0.5         # merging into 4 bits loses most of it
