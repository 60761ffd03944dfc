"""What a tiny run of notebooks 03 (LoRA) and 04 (QLoRA) must show, read from their results files.

Run the notebooks first (about two minutes each on a 2-core CPU):

    cd notebooks && COURSE_PROFILE=tiny papermill 03_lora.ipynb /tmp/03.ipynb
    cd notebooks && COURSE_PROFILE=tiny papermill 04_qlora.ipynb /tmp/04.ipynb

or `python -m course_utils run --profile tiny --only 03 04`.
"""

from __future__ import annotations

import pytest

from course_utils.profiles import TINY
from course_utils.results import load_results

NOTEBOOKS = ("03_lora", "04_qlora")


def results(stem: str) -> dict:
    try:
        return load_results(stem, "tiny")
    except FileNotFoundError as error:
        pytest.fail(f"{error}\nCreate it with: cd notebooks && COURSE_PROFILE=tiny papermill "
                    f"{stem}.ipynb /tmp/{stem}.ipynb  (or `python -m course_utils run --profile "
                    f"tiny --only {stem[:2]}`)", pytrace=False)


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_results_have_the_shared_structure(stem):
    run = results(stem)
    assert run["profile"] == "tiny"
    for key in ("base", "finetuned"):
        assert run["metrics"][key]["n"] == TINY.test_size  # the whole shared test split
        assert "per_example" not in run["metrics"][key]
    for key in ("peak_mib", "predicted_peak_mib", "model_footprint_mib"):
        assert run["memory"][key] > 0
    for key in ("seconds_per_step", "tokens_per_second", "train_seconds", "notebook_seconds"):
        assert run["timings"][key] > 0
    for key in ("trainable_parameters", "total_parameters", "lora_rank", "adapter_mib"):
        assert run["extra"][key] > 0
    assert any("loss" in record for record in run["extra"]["history"])


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_adapter_method_beats_its_base_model(stem):
    metrics = results(stem)["metrics"]
    base, tuned = metrics["base"], metrics["finetuned"]
    assert tuned["token_f1"] > base["token_f1"], (base["token_f1"], tuned["token_f1"])
    assert tuned["bertscore_f1"] > base["bertscore_f1"], (base["bertscore_f1"],
                                                          tuned["bertscore_f1"])
    assert metrics["last_eval_loss"] < metrics["first_eval_loss"]


def test_qlora_beats_the_unquantized_base_too():
    unquantized = results("03_lora")["metrics"]["base"]
    tuned = results("04_qlora")["metrics"]["finetuned"]
    assert tuned["token_f1"] > unquantized["token_f1"]
    assert tuned["bertscore_f1"] > unquantized["bertscore_f1"]


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_only_a_few_percent_of_the_parameters_train(stem):
    extra = results(stem)["extra"]
    assert extra["trainable_parameters"] == extra["expected_trainable_parameters"]
    # r=32 adapters: on q/k/v/o (LoRA) 2.7 %, on all linear layers (QLoRA) 6.8 % of 135M
    assert extra["trainable_parameters"] < 0.10 * extra["total_parameters"]


def test_lora_adapter_and_merge():
    extra = results("03_lora")["extra"]
    assert extra["start_logit_difference"] == 0.0          # B = 0: the base model at step 0
    assert extra["merge_logit_difference"] < 1e-3          # merged == adapted (fp32)
    assert extra["adapter_mib"] < 0.1 * extra["full_checkpoint_mib"]
    sweep = results("03_lora")["metrics"]["rank_sweep"]
    assert len(sweep) >= 2 and len({point["r"] for point in sweep}) == len(sweep)


def test_qlora_footprint_is_at_most_035_of_fp32():
    footprints = results("04_qlora")["memory"]["footprints_mib"]
    assert set(footprints) == {"32bit", "16bit", "8bit", "4bit"}
    assert footprints["4bit"] <= 0.35 * footprints["32bit"]
    assert footprints["4bit"] < footprints["8bit"] < footprints["16bit"] < footprints["32bit"]


def test_qlora_merge_into_16_bit_keeps_what_training_taught():
    run = results("04_qlora")
    check = run["metrics"]["merge_check"]
    # the merged 16-bit model is close to, not identical with, the 4-bit model plus adapter:
    # it must still answer better than the base model did on the same questions
    assert check["token_f1_merged"] > check["token_f1_base"], check
    assert check["agreement"] > 0, check
    requantized = run["extra"]["requantization"]
    assert requantized["rounding_to_update"] > 1     # NF4's steps dwarf the update
    assert requantized["update_error"] > 0.5         # merging into 4 bits loses most of it
