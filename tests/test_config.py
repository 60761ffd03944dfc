"""Profiles, the recipe table, paths, the first cell of every notebook, and the hardware's
number format. Profiles and recipes are validated data; the profile is chosen by parameter,
then COURSE_PROFILE, then the hardware; bf16 only on GPUs that compute it natively."""

import json
import os
import subprocess
import sys

import pytest
import torch

from course_utils import config
from course_utils.config import (
    FULL,
    RECIPES,
    TINY,
    Recipe,
    get_profile,
    project_root,
    recipe,
    resolve_profile_name,
    results_dir,
    setup_notebook,
)
from course_utils.hardware import detect_hardware
from course_utils.training import logging_arguments

TRAINING_NOTEBOOKS = ("01", "02", "03", "04", "05")

# --- profiles -----------------------------------------------------------------------------------


def test_full_profile_is_the_original_course():
    assert FULL.lm_model == "distilgpt2"
    assert FULL.chat_model == "Qwen/Qwen3-0.6B"
    assert FULL.rag_model == "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
    assert FULL.rag_quantization == "4bit"
    assert (FULL.dataset, FULL.dataset_config) == ("microsoft/ms_marco", "v1.1")
    assert FULL.embedding_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert FULL.bertscore_model == "roberta-large"
    assert FULL.test_size >= 100
    assert not FULL.offline


def test_tiny_profile_is_offline_and_packaged():
    assert TINY.offline
    assert TINY.test_size >= 40
    for model in (TINY.lm_model, TINY.chat_model, TINY.rag_model):
        assert model == "packaged:smollm2-135m-instruct"
    assert TINY.embedding_model == TINY.bertscore_model == "packaged:all-minilm-l6-v2"


def test_explicit_name_beats_environment(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "full")
    assert get_profile("tiny").name == "tiny"
    assert get_profile("auto").name == "full"
    assert get_profile(TINY) is TINY


def test_auto_without_environment_follows_hardware(monkeypatch):
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    expected = "full" if torch.cuda.is_available() else "tiny"
    assert resolve_profile_name("auto") == expected
    assert resolve_profile_name(None) == expected
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_profile_name("auto") == "full"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_profile_name("auto") == "tiny"


@pytest.mark.parametrize("name", ["huge", "Tiny-ish", ""])
def test_unknown_profile_lists_the_valid_ones(name, monkeypatch):
    if not name:
        monkeypatch.setenv("COURSE_PROFILE", "medium")
    with pytest.raises(ValueError) as error:
        get_profile(name or "auto")
    message = str(error.value)
    assert "Valid profiles: full, tiny, auto" in message
    assert "PROFILE" in message and "COURSE_PROFILE" in message


def test_profiles_validate_on_creation():
    with pytest.raises(ValueError, match="test_size"):
        TINY.with_overrides(test_size=10)
    with pytest.raises(ValueError, match="rag_quantization"):
        TINY.with_overrides(rag_quantization="3bit")
    with pytest.raises(ValueError, match="max_length must be positive"):
        TINY.with_overrides(max_length=0)
    with pytest.raises(ValueError, match="profile name"):
        TINY.with_overrides(name="my profile")
    assert TINY.with_overrides(train_size=8).train_size == 8
    assert TINY.to_dict()["test_size"] == TINY.test_size


# --- the recipe table -------------------------------------------------------------------------


def test_every_notebook_has_a_recipe_in_both_profiles():
    for notebook in TRAINING_NOTEBOOKS:
        assert {"full", "tiny"} <= set(RECIPES[notebook]), notebook
        for profile in ("full", "tiny"):
            assert recipe(notebook, profile).values, (notebook, profile)


def test_every_value_has_a_reason():
    for notebook, rows in RECIPES.items():
        for profile, row in rows.items():
            for name, entry in row.items():
                assert isinstance(entry, tuple) and len(entry) == 2, (notebook, profile, name)
                value, reason = entry
                assert isinstance(reason, str) and reason.strip(), (notebook, profile, name)


def test_recipe_reads_one_row():
    lora = recipe("03_lora", "tiny")
    value, reason = RECIPES["03"]["tiny"]["learning_rate"]
    assert lora["learning_rate"] == value and lora.reason("learning_rate") == reason
    assert (lora.notebook, lora.profile) == ("03", "tiny")
    assert "learning_rate" in lora and "k" not in lora
    assert recipe("03", TINY) == lora  # a profile or its name; "03" or the notebook's stem
    with pytest.raises(KeyError, match="has no 'k'; it has: .*learning_rate"):
        lora["k"]
    with pytest.raises(ValueError, match="notebooks with recipes: 01, 02"):
        recipe("07_unknown", "tiny")
    table = lora.table()
    assert "learning_rate" in table and reason in table
    assert lora.to_dict() == lora.values


def test_full_recipes_match_the_original_course():
    full = recipe("02_full_finetuning", "full")
    # the original course's effective batch of 16 rows, one row per pass to fit a T4
    assert (full["per_device_train_batch_size"], full["gradient_accumulation_steps"]) == (1, 16)
    assert full["learning_rate"] == 2e-5
    lora = recipe("03_lora", FULL)
    assert (lora["r"], lora["lora_alpha"], lora["lora_dropout"]) == (32, 64, 0.1)
    assert tuple(lora["target_modules"]) == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert lora["learning_rate"] == 1e-4 and tuple(lora["sweep_ranks"]) == (8, 16, 32)
    qlora = recipe("04_qlora", FULL)
    assert (qlora["r"], qlora["lora_alpha"], qlora["lora_dropout"]) == (32, 64, 0.05)
    assert qlora["target_modules"] == "all-linear"
    assert qlora["learning_rate"] == 2e-4 and qlora["optim"] == "paged_adamw_8bit"
    assert recipe("04_qlora", TINY)["optim"] == "adamw_torch"  # nothing to page to on a CPU
    assert len(recipe("03_lora", TINY)["sweep_ranks"]) == 2
    assert recipe("01", TINY)["max_steps"] <= 20
    assert recipe("02", "tiny")["max_new_tokens"] < recipe("02", "full")["max_new_tokens"]
    rag = recipe("05_rag", FULL)
    assert rag["system_prompt"] is False  # DeepSeek-R1: instructions in the user turn


def test_the_three_methods_see_the_same_batches():
    """02-04 differ in method, not in data: same steps, batch sizes and evaluation points."""
    shared = ("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
              "eval_steps", "max_new_tokens")
    for profile in ("full", "tiny"):
        rows = [recipe(notebook, profile) for notebook in ("02", "03", "04")]
        for name in shared:
            assert len({row[name] for row in rows}) == 1, (profile, name)


def test_a_new_profile_reuses_the_recipes_it_names(monkeypatch):
    t4 = FULL.with_overrides(name="t4", recipes_from="full")
    monkeypatch.setitem(config.PROFILES, "t4", t4)
    for notebook in TRAINING_NOTEBOOKS:
        assert recipe(notebook, "t4").values == recipe(notebook, "full").values
    assert recipe("03", "t4").profile == "t4"
    assert get_profile("t4") is t4
    monkeypatch.setenv("COURSE_PROFILE", "t4")
    assert resolve_profile_name("auto") == "t4"
    with pytest.raises(ValueError, match="Valid profiles: full, t4, tiny, auto"):
        get_profile("t5")


def test_a_row_of_the_new_profile_overrides_single_values(monkeypatch):
    monkeypatch.setitem(config.PROFILES, "t4", FULL.with_overrides(name="t4", recipes_from="full"))
    monkeypatch.setitem(config.RECIPES["02"], "t4",
                        {"per_device_train_batch_size": (1, "a T4 has 15 GB")})
    t4, full = recipe("02", "t4"), recipe("02", "full")
    assert t4["per_device_train_batch_size"] == 1
    assert t4.reason("per_device_train_batch_size") == "a T4 has 15 GB"
    assert {k: v for k, v in t4.values.items() if k != "per_device_train_batch_size"} == \
        {k: v for k, v in full.values.items() if k != "per_device_train_batch_size"}
    assert recipe("03", "t4").values == recipe("03", "full").values  # other notebooks untouched


def test_a_profile_without_recipes_says_what_to_add(monkeypatch):
    monkeypatch.setitem(config.PROFILES, "bare", TINY.with_overrides(name="bare"))
    with pytest.raises(ValueError, match=r"add a row to RECIPES\['02'\] or set recipes_from"):
        recipe("02", "bare")


def test_overrides_replace_values_and_none_keeps_them():
    base = recipe("02", "tiny")
    assert base.with_overrides(max_steps=None) == base
    assert base.with_overrides(max_steps=base["max_steps"]) == base
    longer = base.with_overrides(max_steps=40, learning_rate=None)
    assert longer["max_steps"] == 40 and longer["learning_rate"] == base["learning_rate"]
    assert longer.reason("max_steps") == "set by a notebook parameter"
    assert base["max_steps"] != 40, "the original recipe is not changed"
    with pytest.raises(KeyError, match=r"unknown recipe settings \['max_stpes'\]; known: .*"
                                       r"max_steps"):
        base.with_overrides(max_stpes=40)


@pytest.mark.parametrize("profile", ["full", "tiny"])
@pytest.mark.parametrize("notebook", ["01", "02", "03", "04"])
def test_training_values_feed_training_arguments(notebook, profile, tmp_path):
    """The recipe's keys are TrainingArguments' names: the notebooks pass them as they are."""
    from transformers import TrainingArguments

    row = recipe(notebook, profile)
    arguments = row.training_arguments()
    assert {"learning_rate", "max_steps", "per_device_train_batch_size"} <= set(arguments)
    assert not {"r", "lora_alpha", "max_new_tokens", "block_size"} & set(arguments)
    args = TrainingArguments(output_dir=str(tmp_path), **arguments,
                             **logging_arguments(detect_hardware(prefer_cpu=True), 42))
    for name, value in arguments.items():
        assert getattr(args, name) == value, name


def test_recipe_is_frozen():
    with pytest.raises(AttributeError):
        recipe("02", "tiny").notebook = "03"
    assert isinstance(recipe("02", "tiny"), Recipe)


# --- profiles from a file ($COURSE_PROFILES_FILE) --------------------------------------------


@pytest.fixture
def isolated_tables(monkeypatch):
    """PROFILES and RECIPES copies that add_profiles_file may change."""
    monkeypatch.setattr(config, "PROFILES", dict(config.PROFILES))
    monkeypatch.setattr(config, "RECIPES", {k: dict(v) for k, v in config.RECIPES.items()})


def write_profiles(folder, *profiles, name="profiles.json"):
    path = folder / name
    path.write_text(json.dumps({"profiles": list(profiles)}))
    return path


DERIVED = {"name": "full-small", "based_on": "full", "dataset": "./ms_marco", "train_size": 16,
           "validation_size": 8, "rag_corpus_size": 200,
           "recipes": {"03": {"max_steps": 2, "sweep_ranks": [4, 8], "warmup_steps": 0}}}


def test_a_profiles_file_adds_a_profile_based_on_another(tmp_path, isolated_tables):
    (tmp_path / "ms_marco").mkdir()
    added = config.add_profiles_file(write_profiles(tmp_path, DERIVED))
    small = get_profile("full-small")
    assert added == [small]
    assert small.dataset == str(tmp_path / "ms_marco")   # relative to the file
    assert (small.train_size, small.test_size, small.chat_model) == (16, 100, FULL.chat_model)
    assert small.recipes_from == "full" and small.with_overrides(
        name="full", dataset=FULL.dataset, train_size=FULL.train_size,
        validation_size=FULL.validation_size, rag_corpus_size=FULL.rag_corpus_size,
        recipes_from=None) == FULL
    lora, full = recipe("03", "full-small"), recipe("03", "full")
    assert (lora["max_steps"], lora["sweep_ranks"], lora["warmup_steps"]) == (2, (4, 8), 0)
    assert lora.reason("max_steps") == "set in the profiles file profiles.json"
    changed = {"max_steps", "sweep_ranks", "warmup_steps"}
    assert {k: v for k, v in lora.values.items() if k not in changed} == \
        {k: v for k, v in full.values.items() if k not in changed}
    assert recipe("02", "full-small").values == recipe("02", "full").values
    with pytest.raises(ValueError, match="full, full-small, tiny, auto"):
        get_profile("full-large")


@pytest.mark.parametrize("change, message", [
    ({"train_sise": 16}, r"unknown keys \['train_sise'\]; a profile has name, lm_model"),
    ({"name": "full"}, "the name 'full' is taken"),
    ({"name": "Full-Small"}, "'name' must be a lowercase string"),
    ({"based_on": "huge"}, "based_on names no profile: 'huge'; it can name full, tiny"),
    ({"train_size": "16"}, "train_size must be int, got '16'"),
    ({"test_size": 10}, "needs at least 40 test queries"),
    ({"recipes_from": "t4"}, "recipes_from names no profile: 't4'"),
    ({"dataset": "./missing"}, "dataset './missing' is no folder"),
    ({"recipes": {"09": {"max_steps": 2}}}, "notebook with recipes: 01, 02"),
    ({"recipes": {"02": {"max_step": 2}}}, "recipe has no 'max_step'; it has: .*max_steps"),
    ({"recipes": {"02": {"max_steps": "2"}}}, r"recipes\['02'\]\['max_steps'\] must be int"),
    ({"recipes": {"02": {"max_steps": 2.5}}}, "must be int like 125, got 2.5"),
    ({"recipes": {"03": {"sweep_ranks": 4}}}, "must be a list like"),
    ({"recipes": {"05": {"system_prompt": 0}}}, "must be bool like False, got 0"),
])
def test_a_profiles_file_names_its_mistakes(tmp_path, isolated_tables, change, message):
    (tmp_path / "ms_marco").mkdir()
    path = write_profiles(tmp_path, {**DERIVED, **change})
    with pytest.raises(ValueError, match=message) as error:
        config.add_profiles_file(path)
    assert str(path) in str(error.value)
    assert "full-small" not in config.PROFILES, "nothing is added from a file with a mistake"


def test_a_profiles_file_without_based_on_gives_every_field(tmp_path, isolated_tables):
    path = write_profiles(tmp_path, {"name": "bare", "lm_model": "distilgpt2"})
    with pytest.raises(ValueError, match=r"missing fields \['chat_model', "):
        config.add_profiles_file(path)
    complete = {**TINY.to_dict(), "name": "bare", "recipes_from": "tiny"}
    config.add_profiles_file(write_profiles(tmp_path, complete))
    assert get_profile("bare") == TINY.with_overrides(name="bare", recipes_from="tiny")
    assert recipe("05", "bare").values == recipe("05", "tiny").values


def test_an_unreadable_profiles_file_says_why(tmp_path, isolated_tables):
    with pytest.raises(ValueError, match="does not exist .*COURSE_PROFILES_FILE"):
        config.add_profiles_file(tmp_path / "nowhere.json")
    (tmp_path / "broken.json").write_text("{profiles: ")
    with pytest.raises(ValueError, match="is not valid JSON"):
        config.add_profiles_file(tmp_path / "broken.json")
    (tmp_path / "list.json").write_text('[{"name": "x"}]')
    with pytest.raises(ValueError, match='must hold {"profiles": \\[...\\]}'):
        config.add_profiles_file(tmp_path / "list.json")


def test_the_environment_variable_adds_the_files_profiles_at_import(tmp_path):
    """What a notebook's kernel sees: the file is read when course_utils.config is imported."""
    (tmp_path / "ms_marco").mkdir()
    script = ("from course_utils.config import get_profile, recipe; "
              "print(get_profile('auto').name, recipe('03', 'full-small')['sweep_ranks'])")
    environment = {**os.environ, "COURSE_PROFILE": "full-small",
                   "COURSE_PROFILES_FILE": str(write_profiles(tmp_path, DERIVED))}
    done = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True,
                          text=True, check=True)
    assert done.stdout.split() == ["full-small", "(4,", "8)"]
    environment["COURSE_PROFILES_FILE"] = str(write_profiles(tmp_path, {**DERIVED, "seed": "x"},
                                                             name="bad.json"))
    failed = subprocess.run([sys.executable, "-c", script], env=environment,
                            capture_output=True, text=True)
    assert failed.returncode != 0 and "bad.json, profile 'full-small': seed must be int" in \
        failed.stderr


# --- paths -----------------------------------------------------------------------------------


def test_project_root_and_default_results_dir(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    monkeypatch.delenv("COURSE_RESULTS_DIR", raising=False)
    assert project_root() == tmp_path
    assert results_dir("tiny") == tmp_path / "results" / "tiny"
    assert config.run_dir("tiny", "03_lora") == tmp_path / "runs" / "tiny" / "03_lora"
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path / "elsewhere"))
    assert results_dir("full") == tmp_path / "elsewhere" / "full"
    assert results_dir("full").is_dir()


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "cache"))
    assert config.cache_dir() == tmp_path / "cache" and (tmp_path / "cache").is_dir()


# --- setup_notebook ---------------------------------------------------------------------------


def test_setup_prints_versions_profile_and_hardware(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_PROFILE", "tiny")
    ctx = setup_notebook("03_lora", "auto")
    out = capsys.readouterr().out
    assert ctx.profile.name == "tiny" and ctx.name == "03_lora"
    assert "torch " + torch.__version__ in out and "transformers" in out and "peft" in out
    assert "Profile: tiny (offline, packaged models)" in out
    assert f"Hardware: {ctx.hardware.describe()}" in out
    assert ctx.elapsed() >= 0
    assert ctx.run_dir.parts[-3:] == ("runs", "tiny", "03_lora")


def test_setup_seeds_everything(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "tiny")
    setup_notebook("x", verbose=False)
    first = torch.rand(3)
    setup_notebook("x", verbose=False)
    assert torch.equal(first, torch.rand(3))
    setup_notebook("x", verbose=False, seed=7)
    assert not torch.equal(first, torch.rand(3))


def test_setup_gives_the_notebooks_recipe(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "tiny")
    ctx = setup_notebook("03_lora", verbose=False)
    assert ctx.recipe() == recipe("03", "tiny")
    assert ctx.recipe(max_steps=None, r=4)["r"] == 4


def test_setup_without_resume_starts_fresh(tmp_path, monkeypatch, capsys):
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    checkpoint = tmp_path / "runs" / "tiny" / "02_full_finetuning" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    setup_notebook("02_full_finetuning", "tiny")
    assert checkpoint.is_dir(), "resuming is the default: checkpoints stay"
    ctx = setup_notebook("02_full_finetuning", "tiny", resume=False)
    assert not ctx.run_dir.exists()
    assert f"Starting fresh: removed {ctx.run_dir}" in capsys.readouterr().out
    assert (tmp_path / "runs" / "tiny").is_dir(), "other notebooks' runs are kept"


def test_setup_rejects_an_unknown_profile():
    with pytest.raises(ValueError, match="Valid profiles"):
        setup_notebook("x", "enormous", verbose=False)


# --- hardware: which number format the Trainer gets --------------------------------------------


def fake_gpu(monkeypatch, name: str, capability: tuple[int, int], count: int = 1):
    """Make torch report a CUDA GPU. `is_bf16_supported` says True as on a real T4, where
    bf16 is only emulated."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


def test_a_t4_trains_in_fp16_not_bf16(monkeypatch):
    fake_gpu(monkeypatch, "Tesla T4", (7, 5), count=2)
    t4 = detect_hardware()
    assert (t4.device, t4.dtype) == ("cuda", torch.float16)
    assert t4.fp16 and not t4.bf16 and not t4.supports_bf16
    assert t4.half_dtype == torch.float16
    assert t4.device_map == {"": 0}, "a small model stays whole on one of Kaggle's two T4s"
    assert t4.gpu_count == 2 and "Tesla T4" in t4.describe()
    assert logging_arguments(t4, seed=1)["use_cpu"] is False


@pytest.mark.parametrize("name, capability", [("NVIDIA A100-SXM4-40GB", (8, 0)),
                                              ("NVIDIA L4", (8, 9)), ("NVIDIA H100", (9, 0))])
def test_ampere_and_newer_train_in_bf16(monkeypatch, name, capability):
    fake_gpu(monkeypatch, name, capability)
    gpu = detect_hardware()
    assert gpu.dtype == torch.bfloat16 and gpu.bf16 and not gpu.fp16
    assert gpu.half_dtype == torch.bfloat16 and gpu.supports_bf16


def test_a_cpu_computes_in_fp32_without_precision_flags(monkeypatch):
    fake_gpu(monkeypatch, "Tesla T4", (7, 5))
    for cpu in (detect_hardware(prefer_cpu=True), _without_gpu(monkeypatch)):
        assert (cpu.device, cpu.dtype, cpu.gpu_count) == ("cpu", torch.float32, 0)
        assert not cpu.bf16 and not cpu.fp16 and cpu.device_map is None
        assert logging_arguments(cpu, seed=1)["use_cpu"] is True


def _without_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return detect_hardware()


def test_setup_on_a_t4_reports_it(monkeypatch, capsys):
    fake_gpu(monkeypatch, "Tesla T4", (7, 5))
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: None)
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    ctx = setup_notebook("02_full_finetuning")
    assert ctx.profile.name == "full", "a CUDA machine defaults to the full profile"
    assert ctx.hardware.fp16 and not ctx.hardware.bf16
    assert "Tesla T4 | device=cuda | dtype=float16" in capsys.readouterr().out


def test_setup_says_why_auto_chose_the_profile(monkeypatch, capsys):
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    setup_notebook("x", "auto")
    assert "Profile: tiny (offline, packaged models), chosen automatically: no CUDA GPU here" \
        in capsys.readouterr().out
    monkeypatch.setenv("COURSE_PROFILE", "tiny")
    setup_notebook("x", "auto")
    assert "from the environment variable COURSE_PROFILE" in capsys.readouterr().out
    setup_notebook("x", "tiny")
    assert "chosen automatically" not in capsys.readouterr().out
