"""What a tiny run of notebooks 03 (LoRA) and 04 (QLoRA) must show, read from their results
records (see the `tiny_record` fixture in tests/conftest.py).

Differences are judged with paired bootstrap 95 % intervals over the test questions
(course_utils/uncertainty.py): an improvement is asserted where the tiny run's interval lies
above 0; where it does not (exact match; LoRA's overall gain), the test asserts only that the
method is not shown to be worse, and says so in its name or in a strict xfail that fails as soon
as the interval does exclude 0."""

from __future__ import annotations

import math

import pytest

from course_utils.config import RECIPES, TINY
from course_utils.results import FineTuneRecord

NOTEBOOKS = ("03_lora", "04_qlora")


@pytest.fixture(scope="module")
def records(tiny_record) -> dict[str, FineTuneRecord]:
    return {stem: tiny_record(stem) for stem in NOTEBOOKS}


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_records_have_the_shared_structure(records, stem):
    record = records[stem]
    assert isinstance(record, FineTuneRecord) and record.profile == "tiny"
    assert record.settings["split"] == "test"                # never validation in a real run
    assert record.base.n == record.tuned.n == TINY.test_size  # the whole shared test split
    memory, training = record.memory, record.training
    assert memory.peak_mib > 0 and memory.predicted_mib > 0 and memory.model_mib > 0
    assert training.seconds_per_step > 0 and training.tokens_per_second > 0
    assert 0 < training.train_seconds <= record.notebook_seconds
    assert record.details["lora_rank"] > 0 and record.details["adapter_mib"] > 0
    assert any("loss" in entry for entry in training.history)


@pytest.mark.parametrize("stem, weights", [("03_lora", {"fp32", "bf16"}), ("04_qlora", {"nf4"})])
def test_scores_say_what_produced_them(records, stem, weights):
    record = records[stem]
    for scores in (record.base, record.tuned):
        assert scores.model == TINY.chat_model and scores.context == "gold passage"
        assert scores.weights in weights
        assert len(scores.per_question["token_f1"]) == scores.n == len(scores.groups)
        assert set(scores.by_group) == set(scores.groups) == {"answerable", "unanswerable"}
    assert record.base.weights == record.tuned.weights      # the adapters change no base weight


# LoRA's tiny learning rate (1e-3) is the best validation mean of 1e-3, 3e-3 and 1e-2 on the 24
# validation questions (course_tools/tuning/tiny/03_lora-LEARNING_RATE.json), ahead of 3e-3 by
# 0.02 token F1 with an interval of about +-0.2. On the test split its adapter gains on the
# answerable questions but answers none of the 8 unanswerable ones as the base model did, and
# the overall interval contains 0. The recipe is not re-chosen on the test split: the notebook
# prints "no difference these questions can show", and this check says so.
OVERALL_GAIN_NOT_SHOWN = pytest.mark.xfail(
    strict=True, reason="03 at its validation-chosen learning rate: overall gain over the base "
                        "not shown by the 40 test questions (the answerable gain is)")


@pytest.mark.parametrize("stem", NOTEBOOKS)
@pytest.mark.parametrize("metric", ["token_f1", "bertscore_f1"])
def test_adapter_method_learns_the_answerable_questions(records, stem, metric):
    base, tuned = records[stem].base, records[stem].tuned
    gap = tuned.difference(base, metric, group="answerable")
    assert gap.low > 0, f"{stem}: answerable {metric} tuned - base {gap.signed()} includes 0"
    training = records[stem].training
    assert training.last_eval_loss < training.first_eval_loss


@pytest.mark.parametrize("stem", NOTEBOOKS)
@pytest.mark.parametrize("metric", ["token_f1", "bertscore_f1"])
def test_adapter_method_is_not_shown_worse_overall(records, stem, metric):
    gap = records[stem].tuned.difference(records[stem].base, metric)
    assert gap.high > 0, f"{stem}: {metric} tuned - base {gap.signed()}: shown worse"


@pytest.mark.parametrize("stem", [pytest.param("03_lora", marks=OVERALL_GAIN_NOT_SHOWN),
                                  "04_qlora"])
@pytest.mark.parametrize("metric", ["token_f1", "bertscore_f1"])
def test_adapter_method_beats_its_base_model_overall(records, stem, metric):
    gap = records[stem].tuned.difference(records[stem].base, metric)
    assert gap.low > 0, f"{stem}: {metric} tuned - base {gap.signed()} does not exclude 0"


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_exact_match_is_not_shown_worse(records, stem):
    """Exact match moves in steps of 1/n: the tiny run's interval does not settle a gain."""
    base, tuned = records[stem].base, records[stem].tuned
    gap = tuned.difference(base, "exact_match")
    assert gap.high > 0, f"{stem}: exact match tuned - base {gap.signed()}: shown worse"
    assert records[stem].details["differences"]["exact_match"] == gap.to_dict()


def test_qlora_beats_the_unquantized_base_too(records):
    unquantized, tuned = records["03_lora"].base, records["04_qlora"].tuned
    gap = tuned.difference(unquantized, "token_f1")    # the same questions in the same order
    assert gap.low > 0, gap.signed()


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_forgetting_is_measured_with_finite_numbers(records, stem):
    forgetting = records[stem].forgetting
    assert set(forgetting) >= {"perplexity", "prose_nll", "kl_to_base", "trivia_accuracy",
                               "format_bleed", "n"}
    assert all(n >= 2 for n in forgetting["n"].values())
    for side in ("base", "tuned"):
        assert math.isfinite(forgetting["perplexity"][side]) and forgetting["perplexity"][side] > 1
    kl = forgetting["kl_to_base"]
    assert math.isfinite(kl["estimate"]) and 0 <= kl["low"] <= kl["estimate"] <= kl["high"]
    assert kl["n"] == forgetting["n"]["prose"]
    for name in ("prose_nll", "trivia_accuracy", "format_bleed"):
        for part in ("base", "tuned", "difference"):
            interval = forgetting[name][part]
            assert all(math.isfinite(interval[k]) for k in ("estimate", "low", "high"))
            assert interval["low"] <= interval["estimate"] <= interval["high"]
    # training moved the model: the adapters changed its next-token distributions on prose
    assert kl["low"] > 0


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


def test_rank_sweep_has_a_fixed_alpha_and_an_alpha_2r_series(records):
    sweep = records["03_lora"].details["rank_sweep"]
    runs = [(point["r"], point["alpha"]) for point in sweep]
    assert len(set(runs)) == len(runs)                        # no run twice
    main_alpha = records["03_lora"].settings["lora_alpha"]
    fixed = {r for r, alpha in runs if alpha == main_alpha}
    doubled = {r for r, alpha in runs if alpha == 2 * r}
    assert fixed == doubled == set(RECIPES["03"]["tiny"]["sweep_ranks"][0]), runs
    for point in sweep:
        assert point["alpha / r"] == pytest.approx(point["alpha"] / point["r"])
        assert math.isfinite(point["eval loss"])



def test_nf4_error_is_compared_with_never_quantized_weights(records):
    comparison = records["04_qlora"].details["nf4_comparison"]
    assert len(comparison) == 2
    chat, unquantized = comparison.values()     # the chat model's q_proj, then the encoder's
    # the tiny chat model comes from a Q4_1 file: at most 16 values in a block of 32
    assert chat["distinct values per 32"] <= 16
    assert unquantized["distinct values per 32"] > 30
    for row in (chat, unquantized):
        assert 0 < row["relative_error"] < 1 and math.isfinite(row["mean_abs_error"])


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
