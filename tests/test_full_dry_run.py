"""The `full` profile's code paths on a CPU, offline: notebooks 00-06 in a dry run of `full`.

course_tools/full_dry_run.py builds stand-ins under the `full` model ids in a Hugging Face
cache, microsoft/ms_marco's layout made from the mini MS MARCO, and the profile `full-dry-run`
(full with that data, small sizes, one or two training steps). Each notebook runs with papermill
in that profile, with the few parameters below; the checks read the records and the executed
notebooks: the data came through the hub loader and was sampled to the profile's sizes, the
recipes' checkpoint settings were used, the rank sweep trained several ranks, notebook 04's 7B
branch ran, BERTScore was rescaled with roberta-large's baseline, and DeepSeek-R1's thoughts
stayed out of notebook 05's answers, some of them forced after the thinking budget (the
stand-in's replies are scripted in its weights: see the builder).

What the stand-ins cannot show: the real models' memory, speed and answer quality, CUDA-only
paths (paged 8-bit AdamW, mixed precision, fp16 on a T4) and the download itself.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import nbformat
import pytest

from course_tools.full_dry_run import (
    PROFILE_NAME,
    PROFILE_SIZES,
    SCRIPTED_ANSWER,
    SCRIPTED_OUTPUT,
    SCRIPTED_REASONING,
    build,
)
from course_utils.config import FULL
from course_utils.results import read_record

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
N_TEST = 8  # test questions answered in 02-05 (the profile's test split keeps its 40)
PARAMETERS = {  # papermill parameters of each notebook, besides PROFILE
    "00_setup_check": {"MAX_NEW_TOKENS": 8},
    "01_first_finetune": {"MAX_NEW_TOKENS": 8, "RESUME": False},
    "02_full_finetuning": {"N_TEST": N_TEST, "RESUME": False},
    "03_lora": {"N_TEST": N_TEST, "N_EXAMPLES": 2, "RESUME": False},
    "04_qlora": {"N_TEST": N_TEST, "N_EXAMPLES": 2, "N_MERGE_CHECK": 4, "SHOW_7B": True,
                 "RESUME": False},
    "05_rag": {"N_TEST": N_TEST},
    "06_comparison": {},
}
SHORT_ANSWER = SCRIPTED_ANSWER.removesuffix(" [1]")   # what is scored: the citation goes


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """Build the dry run's folder (seconds): stand-ins, data, profiles file."""
    return build(tmp_path_factory.mktemp("full-dry-run") / "build")


@pytest.fixture(scope="module")
def executed(dry_run):
    """Run notebooks 00-06 in order in the dry-run profile; returns the folder the kernels
    worked in (records in results/, checkpoints in runs/, executed copies) and, per notebook,
    the error it raised or None. A failing notebook does not stop the later ones."""
    import papermill

    folder = dry_run.folder.parent
    errors = {}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {**dry_run.environment(),
                            "COURSE_RESULTS_DIR": str(folder / "results")}.items():
            patch.setenv(name, value)   # the kernels inherit the environment
        for notebook, parameters in PARAMETERS.items():
            try:
                papermill.execute_notebook(
                    str(NOTEBOOKS_DIR / f"{notebook}.ipynb"), str(folder / f"{notebook}.ipynb"),
                    parameters={"PROFILE": PROFILE_NAME, **parameters}, cwd=str(folder),
                    progress_bar=False)
                errors[notebook] = None
            except Exception as error:  # papermill's error names the cell and the exception
                errors[notebook] = error
    return folder, errors


def record(executed, notebook: str):
    folder, errors = executed
    if errors[notebook] is not None:
        pytest.fail(f"notebooks/{notebook}.ipynb failed in the dry run: {errors[notebook]}")
    return read_record(folder / "results" / PROFILE_NAME / f"{notebook}.json", PROFILE_NAME)


def output_of(executed, notebook: str, first_line: str) -> str:
    """The text output of the executed cell whose source starts with `first_line`."""
    folder, _ = executed
    for cell in nbformat.read(folder / f"{notebook}.ipynb", as_version=4).cells:
        if cell.cell_type == "code" and cell.source.startswith(first_line):
            return "".join(o.get("text", "") for o in cell.get("outputs", []))
    raise AssertionError(f"no cell starting with {first_line!r} in {notebook}")


# --- the stand-ins, without a notebook ----------------------------------------------------------


def test_the_r1_stand_in_follows_its_script_and_the_thoughts_are_kept_apart(dry_run):
    """The generator of notebook 05 in 4 bits, as 05 loads it. Greedy, it thinks, closes
    </think> and answers; sampled as DeepSeek advises, some rows think past a thinking budget
    and get their answer forced. answer_fields keeps the thoughts apart from the answer."""
    import torch
    from transformers import BitsAndBytesConfig

    from course_utils.data import closed_book_prompt, rag_prompt
    from course_utils.evaluation import generate_answers, generate_with_thinking_budget
    from course_utils.models import load_causal_lm
    from course_utils.rag import answer_fields

    snapshot = next((dry_run.hub_cache / "models--deepseek-ai--DeepSeek-R1-Distill-Qwen-7B"
                     / "snapshots").iterdir())
    model, tokenizer = load_causal_lm(str(snapshot), quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32))
    context = [{"id": "p1", "text": "The domestic cat descends from the African wildcat.",
                "url": "https://x.example/cats", "score": 0.8}]
    question = "what is the cat descended from"
    prompts = [rag_prompt(tokenizer, question, context, system=False),
               closed_book_prompt(tokenizer, question, system=False)]
    assert all(p.endswith("<think>\n") for p in prompts)   # R1's template opens the thoughts
    greedy = generate_answers(model, tokenizer, prompts, max_new_tokens=64,
                              remove_reasoning=False, progress=False)
    assert greedy == [SCRIPTED_OUTPUT] * 2
    rag = answer_fields(greedy[0], context, prompts[0])
    assert (rag["short_answer"], rag["sources"], rag["reasoning"]) == \
        (SHORT_ANSWER, [1], SCRIPTED_REASONING)
    assert rag["answer"] == f"{SHORT_ANSWER}\n\nSources: [1] https://x.example/cats"
    cut = answer_fields(greedy[0][:20], context, prompts[0])   # stopped mid-thought: no answer
    assert (cut["short_answer"], cut["sources"]) == ("", [])

    outputs, forced = generate_with_thinking_budget(
        model, tokenizer, prompts[:1] * 8, thinking_budget=16, answer_budget=16,
        answer_lead="Final answer:", do_sample=True, temperature=0.6, top_p=0.95, seed=42,
        progress=False)
    assert True in forced and False in forced
    for output, was_forced in zip(outputs, forced, strict=True):
        fields = answer_fields(output, context, prompts[0])
        assert fields["short_answer"] == SHORT_ANSWER
        assert fields["reasoning"].startswith("Reading again and" if was_forced else
                                              SCRIPTED_REASONING)


def test_the_stand_ins_have_the_full_models_architectures(dry_run):
    for model_id, model_type in [(FULL.lm_model, "gpt2"), (FULL.chat_model, "qwen3"),
                                 (FULL.rag_model, "qwen2"), (FULL.bertscore_model, "roberta"),
                                 (FULL.embedding_model, "bert")]:
        repo = dry_run.hub_cache / ("models--" + model_id.replace("/", "--"))
        commit = (repo / "refs" / "main").read_text()
        config = json.loads((repo / "snapshots" / commit / "config.json").read_text())
        assert config["model_type"] == model_type, model_id
    profiles = json.loads(dry_run.profiles_file.read_text())["profiles"]
    assert [(p["name"], p["based_on"]) for p in profiles] == [(PROFILE_NAME, "full")]


# --- the notebooks ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("notebook", list(PARAMETERS))
def test_each_notebook_runs_in_the_dry_run_profile(executed, notebook):
    saved = record(executed, notebook)
    assert saved.profile == PROFILE_NAME
    models = {model for role, model in saved.models.items() if role != "quantization"}
    assert models <= {FULL.lm_model, FULL.chat_model, FULL.rag_model, FULL.embedding_model}


@pytest.mark.slow
def test_the_data_came_through_the_hub_loader_at_the_profiles_sizes(executed, dry_run):
    rows = output_of(executed, "02_full_finetuning", "# NBVAL_CHECK_OUTPUT\nprint(f\"rows:")
    sizes = PROFILE_SIZES
    assert (f"rows: {sizes['train_size']} train, {sizes['validation_size']} validation, "
            f"{sizes['test_size']} test") in rows
    # datasets.load_dataset(<folder>, "v1.1") prepared the folder's v1.1 config in its cache
    assert list((dry_run.folder / "hf" / "datasets").glob("ms_marco/v1.1/*/*/dataset_info.json"))
    rag = record(executed, "05_rag")
    assert rag.details["corpus_size"] == sizes["rag_corpus_size"]  # distractors: the hub's train


@pytest.mark.slow
def test_training_used_the_full_recipes_steps_and_checkpoints(executed):
    folder, _ = executed
    for notebook in ("01_first_finetune", "02_full_finetuning", "03_lora", "04_qlora"):
        training = record(executed, notebook).training
        assert training.steps == 2, notebook
        assert math.isfinite(training.first_eval_loss) and math.isfinite(training.last_eval_loss)
    runs = folder / "runs" / PROFILE_NAME
    # full keeps 2 checkpoints in 01 and 1 in 02 (save_total_limit), saved every step here
    assert sorted(p.name for p in (runs / "01_first_finetune").glob("checkpoint-*")) == \
        ["checkpoint-1", "checkpoint-2"]
    assert [p.name for p in (runs / "02_full_finetuning").glob("checkpoint-*")] == ["checkpoint-2"]


@pytest.mark.slow
def test_the_rank_sweep_trained_several_ranks(executed):
    sweep = record(executed, "03_lora").details["rank_sweep"]
    # ranks 4 and 8 at the main adapter's alpha (64) and at alpha = 2 r, and the main adapter
    assert [(point["r"], point["alpha"]) for point in sweep] == \
        [(4, 8), (4, 64), (8, 16), (8, 64), (32, 64)]
    assert all(math.isfinite(point["eval loss"]) for point in sweep)
    parameters = {point["r"]: point["trainable parameters"] for point in sweep}
    assert parameters[4] < parameters[8] < parameters[32]


@pytest.mark.slow
def test_notebook_04_measured_the_7b_branch_in_4_bits(executed):
    measured = record(executed, "04_qlora").details["seven_b_measured"]
    assert set(measured) == {"footprint_gib", "training_step_peak_gib"}
    assert all(value > 0 for value in measured.values())


@pytest.mark.slow
def test_bertscore_is_rescaled_with_roberta_large(executed):
    for scores in (record(executed, "02_full_finetuning").tuned, record(executed, "05_rag").rag):
        assert scores.bertscore_model == "roberta-large" and scores.bertscore_rescaled
        assert scores.n == N_TEST


@pytest.mark.slow
def test_r1_thoughts_stay_out_of_notebook_05s_answers(executed):
    rag = record(executed, "05_rag")
    details = rag.details
    # some sampled thoughts ran past the thinking budget and had their answer forced, some not
    assert 0 < rag.forced_share["closed_book"] + rag.forced_share["rag"] < 2
    assert details["on_topic"]["retrieved"] and not details["off_topic"]["retrieved"]
    assert details["on_topic"]["answer"].startswith(f"{SHORT_ANSWER}\n\nSources: [1] ")
    for example in details["examples"]:
        assert example["closed book"] == SHORT_ANSWER
        assert example["RAG"].startswith(f"{SHORT_ANSWER}\n\nSources: [1] ")
        assert "think" not in example["RAG"] + example["closed book"]


@pytest.mark.slow
def test_the_comparison_reads_every_record(executed):
    rows = record(executed, "06_comparison").rows
    assert {row["notebook"] for row in rows} == {"02_full_finetuning", "03_lora", "04_qlora",
                                                 "05_rag"}
