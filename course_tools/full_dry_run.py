"""Does the `full` profile's code run? A dry run of it, offline on a CPU, in minutes.

The `full` profile (DistilGPT2, Qwen3-0.6B, DeepSeek-R1-Distill-Qwen-7B in 4 bits, MS MARCO from
the hub, all-MiniLM-L6-v2, BERTScore with roberta-large) needs a GPU and a download. Its code
paths (the hub data set, a rank sweep over several ranks, the 7B branch of notebook 04, R1's
`<think>` blocks in 05, BERTScore rescaled with a baseline, ...) are run here on stand-ins,
all built into one folder in seconds:

- hf/hub: a Hugging Face cache holding a stand-in under each model id of `full`, so
  transformers, sentence-transformers and bert-score load them by that id, offline, through
  the same code as on Kaggle. The stand-ins have the architecture classes of the real models
  (GPT-2, Qwen3, Qwen2, RoBERTa), random weights, the shipped config shapes
  (course_utils/resources/model_shapes) shrunk to 2 layers (RoBERTa keeps 24: BERTScore reads
  roberta-large's layer 17) and small widths, and tokenizers made from the packaged SmolLM2
  tokenizer, with chat templates that behave like Qwen3's (`enable_thinking`) and
  DeepSeek-R1's (the assistant turn opens `<think>`). all-MiniLM-L6-v2 is the packaged model.
- ms_marco: microsoft/ms_marco v1.1 in the hub's layout (README.md whose YAML names the
  config's parquet files per split, features as on the dataset card), made from the mini MS
  MARCO; course_utils.data loads it with `datasets.load_dataset(folder, "v1.1")`.
- profiles.json: the profile `full-dry-run` (course_utils.config reads it from
  $COURSE_PROFILES_FILE): `full` with that data folder, small sizes and the `full` recipes
  with one or two steps.

The R1 stand-in's replies are set by its weights, not by chance: its decoder layers add little
to the residual stream, so each next token depends on the current one only, through a table
written into its embeddings and output head (script_next_tokens). After the `<think>\\n` that
ends every generation prompt it writes "Reading"; greedy, it goes on to close its thoughts and
answer (SCRIPTED_OUTPUT); sampled as DeepSeek advises, it does so about 3 times in 5, and
otherwise thinks " again and again ..." until a thinking budget closes its thoughts; after a
token outside the table (the ":" of "Final answer:" after a forced `</think>`) it answers.

    python -m course_tools.full_dry_run build [FOLDER]   # default build/full-dry-run

prints the environment to run notebooks with (e.g. `python -m course_tools run --profile
full-dry-run`). tests/test_full_dry_run.py runs notebooks 00-06 this way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

PROFILE_NAME = "full-dry-run"
VERSION = "4"  # written to the folder's marker; bump it when what is built changes
MARKER = "dry_run.json"
SCRIPTED_REASONING = "Reading the sources first."
SCRIPTED_ANSWER = "Scripted reply [1]"
LOOPING_THOUGHTS = "Reading again and"   # " again and" repeats until a thinking budget ends it
# what the R1 stand-in writes greedily after the prompt's "<think>\n", whatever the prompt (R1
# puts "\n\n" after </think>; a space here: the prompt's "\n" already leads to "Reading")
SCRIPTED_OUTPUT = f"{SCRIPTED_REASONING}</think> {SCRIPTED_ANSWER}"
THINK_TAGS = ["<think>", "</think>"]   # added tokens, not special: decoding keeps them
# the dataset card's features of microsoft/ms_marco v1.1, transcribed (tests/test_data.py)
CARD_INFO = (Path(__file__).resolve().parents[1] / "tests" / "fixtures"
             / "ms_marco_v1.1_dataset_info.yaml")

# The profile: `full` with the built data folder and sizes that run in seconds.
PROFILE_SIZES = {"train_size": 16, "validation_size": 8, "test_size": 40,
                 "rag_corpus_size": 200}
_TRAINING = {"max_steps": 2, "gradient_accumulation_steps": 2, "eval_steps": 1,
             "save_steps": 1,   # two steps, evaluated after each, a checkpoint rotated once
             "max_new_tokens": 16}  # the Qwen3 stand-in writes random words up to the limit
RECIPE_OVERRIDES = {
    "01": {"max_steps": 2, "eval_steps": 1, "save_steps": 1, "eval_blocks": 8},
    "02": _TRAINING,
    "03": {**_TRAINING, "sweep_ranks": [4, 8]},   # the main rank 32 and two more
    "04": _TRAINING,
    "05": {"max_new_tokens": 16,   # the thinking budget: SCRIPTED_OUTPUT fits, looping does not
           "answer_budget": 16},   # a forced answer: " Scripted reply [1]" and the end token
}

# --- chat templates -----------------------------------------------------------------------------
# Qwen3: ChatML; with enable_thinking=False the assistant turn starts with an empty think block.
QWEN3_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)
# DeepSeek-R1 distills: the system prompt goes first, unmarked; the assistant turn opens <think>.
R1_USER, R1_ASSISTANT = "<｜User｜>", "<｜Assistant｜>"
R1_BOS, R1_EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
R1_TEMPLATE = (
    "{%- set ns = namespace(system_prompt='') %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{%- set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}"
    "{{- bos_token + ns.system_prompt }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{- '" + R1_USER + "' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- '" + R1_ASSISTANT + "' + message['content'] + '" + R1_EOS + "' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '" + R1_ASSISTANT + "<think>\\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class DryRun:
    folder: Path

    @property
    def hub_cache(self) -> Path:
        return self.folder / "hf" / "hub"

    @property
    def dataset(self) -> Path:
        return self.folder / "ms_marco"

    @property
    def profiles_file(self) -> Path:
        return self.folder / "profiles.json"

    def environment(self) -> dict[str, str]:
        """What a kernel needs to run the `full-dry-run` profile offline on the stand-ins."""
        hf = self.folder / "hf"
        return {"COURSE_PROFILES_FILE": str(self.profiles_file), "COURSE_PROFILE": PROFILE_NAME,
                "COURSE_CACHE_DIR": str(self.folder / "cache"),   # RAG index, apart from tiny's
                "HF_HOME": str(hf), "HF_HUB_CACHE": str(self.hub_cache),
                "HF_DATASETS_CACHE": str(hf / "datasets"),
                "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "MPLBACKEND": "Agg"}


def build(folder: str | Path = "build/full-dry-run") -> DryRun:
    """Build (or reuse, when its marker names this VERSION) everything the dry run reads."""
    dry_run = DryRun(Path(folder).resolve())
    marker = dry_run.folder / MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("version") == VERSION:
        return dry_run
    if marker.is_file():
        shutil.rmtree(dry_run.folder)   # an older build
    elif dry_run.folder.exists() and any(dry_run.folder.iterdir()):
        raise ValueError(f"{dry_run.folder} holds other files: build into a new or empty folder")
    dry_run.folder.mkdir(parents=True, exist_ok=True)
    import torch

    torch.manual_seed(0)
    smollm2 = _smollm2_folder()
    build_distilgpt2(_snapshot(dry_run.hub_cache, "distilgpt2"), smollm2)
    build_qwen3(_snapshot(dry_run.hub_cache, "Qwen/Qwen3-0.6B"), smollm2)
    build_r1(_snapshot(dry_run.hub_cache, "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"), smollm2)
    build_roberta(_snapshot(dry_run.hub_cache, "roberta-large"), smollm2)
    link_minilm(_snapshot(dry_run.hub_cache, "sentence-transformers/all-MiniLM-L6-v2"))
    build_ms_marco(dry_run.dataset)
    write_profiles_file(dry_run)
    marker.write_text(json.dumps({"version": VERSION}))
    return dry_run


# --- a Hugging Face cache ------------------------------------------------------------------------

def _snapshot(hub_cache: Path, repo_id: str) -> Path:
    """The snapshot folder of a model repo in a hub cache (models--owner--name/snapshots/<commit>),
    with refs/main naming it, as huggingface_hub lays out a download."""
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(f"stand-in {repo_id} {VERSION}".encode()).hexdigest()
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


def _smollm2_folder() -> Path:
    from course_utils.models import resolve_model_path

    return Path(resolve_model_path("packaged:smollm2-135m-instruct"))


def _tokenizer(smollm2: Path, chat_template: str | None, eos: str, pad: str | None,
               bos: str | None, added: list[str] = (), special: list[str] = ()):
    """The SmolLM2 tokenizer (byte-level BPE, like GPT-2's and Qwen's) with other end tokens,
    extra tokens and a chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    if special:
        tokenizer.add_tokens(list(special), special_tokens=True)
    if added:
        tokenizer.add_tokens(list(added))
    tokenizer.eos_token, tokenizer.bos_token, tokenizer.pad_token = eos, bos, pad
    tokenizer.chat_template = chat_template
    return tokenizer


def _shrunk_config(model_id: str, **sizes):
    """The shipped config shape of `model_id` with some sizes replaced."""
    from transformers import AutoConfig

    from course_utils.estimator import shipped_config

    shape = shipped_config(model_id).to_dict()
    for derived in ("layer_types", "transformers_version", "architectures", "model_type"):
        shape.pop(derived, None)
    return AutoConfig.for_model(shipped_config(model_id).model_type, **{**shape, **sizes})


def _save(model, tokenizer, snapshot: Path, generation: dict | None = None) -> None:
    """Model (with the generation defaults of the real model's generation_config.json, if
    given) and tokenizer (unless None) into a snapshot folder."""
    from transformers import GenerationConfig

    if generation is not None:
        model.generation_config = GenerationConfig(**generation)
    model.save_pretrained(snapshot)
    if tokenizer is not None:
        tokenizer.save_pretrained(snapshot)


# --- the stand-ins -------------------------------------------------------------------------------

def build_distilgpt2(snapshot: Path, smollm2: Path) -> None:
    """GPT-2 (distilgpt2's shape, 2 layers of 64): a base model, no chat template, no pad token."""
    from transformers import AutoModelForCausalLM

    tokenizer = _tokenizer(smollm2, None, eos="<|endoftext|>", pad=None, bos="<|endoftext|>")
    tokenizer.unk_token = "<|endoftext|>"
    end = tokenizer.eos_token_id
    config = _shrunk_config("distilgpt2", n_layer=2, n_embd=64, n_head=2,
                            vocab_size=len(tokenizer), bos_token_id=end, eos_token_id=end)
    _save(AutoModelForCausalLM.from_config(config), tokenizer, snapshot)


def build_qwen3(snapshot: Path, smollm2: Path) -> None:
    """Qwen3 (Qwen3-0.6B's shape, 2 layers of 64): ChatML, think tags, pad differs from eos,
    Qwen's sampling defaults in its generation config."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = _tokenizer(smollm2, QWEN3_TEMPLATE, eos="<|im_end|>", pad="<|endoftext|>",
                           bos=None, added=THINK_TAGS)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    config = _shrunk_config("Qwen/Qwen3-0.6B", hidden_size=64, intermediate_size=128,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            head_dim=16, max_position_embeddings=2048,
                            vocab_size=len(tokenizer), bos_token_id=pad, eos_token_id=eos,
                            pad_token_id=pad)
    model = AutoModelForCausalLM.from_config(config)
    # A random decoder whose layers add little, with its head tied to its embeddings as in
    # Qwen3-0.6B, repeats its last token: the template's "\n\n", an empty answer. With the final
    # norm negated, the next token is the one least like the current: answers of random words.
    with torch.no_grad():
        model.model.norm.weight.neg_()
    _save(model, tokenizer, snapshot,
          generation=dict(bos_token_id=pad, eos_token_id=[eos, pad], pad_token_id=pad,
                          do_sample=True, temperature=0.6, top_k=20, top_p=0.95))


def build_r1(snapshot: Path, smollm2: Path) -> None:
    """Qwen2 (DeepSeek-R1-Distill-Qwen-7B's shape, 2 layers of 64, untied head): R1's template
    and end tokens, and weights that script its replies (see the top of this module)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = _tokenizer(smollm2, R1_TEMPLATE, eos=R1_EOS, pad=R1_EOS, bos=R1_BOS,
                           added=THINK_TAGS, special=[R1_BOS, R1_EOS, R1_USER, R1_ASSISTANT])
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    config = _shrunk_config("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", hidden_size=64,
                            intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, max_position_embeddings=4096,
                            vocab_size=len(tokenizer), bos_token_id=bos, eos_token_id=eos)
    model = AutoModelForCausalLM.from_config(config)
    _save(model, tokenizer, snapshot)
    tokenizer = AutoTokenizer.from_pretrained(snapshot)  # the class notebooks get: Qwen2Tokenizer

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Question: why?"}],
                                           add_generation_prompt=True, tokenize=False)
    closing = [ids(prompt)[-1], *ids(SCRIPTED_OUTPUT), eos]   # the "\n" after <think>, ...
    answer, looping = ids(" " + SCRIPTED_ANSWER) + [eos], ids(LOOPING_THOUGHTS)
    if (len(set(closing[:-1])) < len(closing) - 1 or closing[-len(answer):] != answer
            or looping[0] != closing[1] or set(looping[1:]) & set(closing)):
        raise ValueError("the stand-in's scripts must share only their first word and the "
                         f"answer, and repeat no token: {closing}, {looping}")
    table = {token: {following: 10.0} for token, following in zip(closing[:-1], closing[1:], strict=True)}
    table[looping[0]][looping[1]] = 9.97     # greedy closes; sampling at 0.6 loops 2 in 5
    table[looping[1]], table[looping[2]] = {looping[2]: 10.0}, {looping[1]: 10.0}
    script_next_tokens(model, table, otherwise=answer[0])
    _save(model, None, snapshot,
          generation=dict(bos_token_id=bos, eos_token_id=eos, do_sample=True, temperature=0.6,
                          top_p=0.95))


def script_next_tokens(model, table: dict[int, dict[int, float]], otherwise: int,
                       scale: float = 50.0) -> None:
    """Set a decoder's embeddings and (untied) output head so that its next token depends on
    the current token only: after a token of `table`, table[token] gives the next tokens and
    their head weights (a logit is about weight * sqrt(hidden)); after any other token,
    `otherwise` follows with weight 10.

    Each token of `table` embeds as `scale` along a direction of its own, every other token
    along direction 0: far above what the decoder layers add to the residual stream (their
    weights are ~0.02), so the final norm sees that direction alone, and the head rows of the
    next tokens read it.
    """
    import torch

    if model.config.tie_word_embeddings:
        raise ValueError("scripting needs an output head apart from the embeddings")
    if len(table) >= model.config.hidden_size:
        raise ValueError(f"{len(table)} scripted tokens need a hidden size above that")
    embeddings = model.get_input_embeddings().weight        # (vocab, hidden)
    head = model.get_output_embeddings().weight             # (vocab, hidden)
    with torch.no_grad():
        embeddings.zero_()
        embeddings[:, 0] = scale
        head[otherwise, 0] = 10.0
        for direction, (token, following) in enumerate(table.items(), start=1):
            embeddings[token] = 0.0
            embeddings[token, direction] = scale
            for next_token, weight in following.items():
                head[next_token, direction] = weight


def build_roberta(snapshot: Path, smollm2: Path) -> None:
    """RoBERTa (roberta-large: 24 layers of 1024, 16 heads, 514 positions) with its 24 layers
    at width 32, and a RobertaTokenizer (bert-score checks the class) on SmolLM2's BPE."""
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    bpe = json.loads((smollm2 / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    specials = ["<s>", "<pad>", "</s>", "<unk>"]                 # roberta's ids 0-3
    words = [w for w, _ in sorted(bpe["vocab"].items(), key=lambda item: item[1])
             if not (w.startswith("<") and w.endswith(">"))]   # SmolLM2's own special tokens
    vocab = {word: i for i, word in enumerate([*specials, *words, "<mask>"])}
    tokenizer = RobertaTokenizer(vocab=vocab, merges=[tuple(m) if isinstance(m, list) else
                                                      tuple(m.split(" ")) for m in bpe["merges"]],
                                 model_max_length=512)
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=24,
                           num_attention_heads=2, intermediate_size=64,
                           max_position_embeddings=514, type_vocab_size=1,
                           pad_token_id=1, bos_token_id=0, eos_token_id=2)
    _save(RobertaModel(config, add_pooling_layer=False), tokenizer, snapshot)


def link_minilm(snapshot: Path) -> None:
    """all-MiniLM-L6-v2 itself: the packaged folder's files, linked as a download would be."""
    from course_utils.models import packaged_model_folder

    source = packaged_model_folder("all-minilm-l6-v2")
    for path in source.rglob("*"):
        if path.is_file():
            target = snapshot / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)


# --- the data set --------------------------------------------------------------------------------

def build_ms_marco(folder: Path) -> None:
    """microsoft/ms_marco's layout: README.md with the v1.1 config's parquet files per split and
    the card's features; train from the mini train split, validation from the mini validation
    and test splits (the loader draws its test and validation rows there), and a test split
    without answers, as on the hub."""
    from datasets import Dataset

    from course_utils.data import MINI_DIR, MSMARCO_FEATURES

    def rows(name):
        return [json.loads(line) for line in (MINI_DIR / f"{name}.jsonl").read_text(
            encoding="utf-8").splitlines() if line.strip()]

    splits = {"train": rows("train"), "validation": rows("validation") + rows("test"),
              "test": [{**row, "answers": [], "wellFormedAnswers": []} for row in rows("test")]}
    (folder / "v1.1").mkdir(parents=True)
    for name, split in splits.items():
        Dataset.from_list([{k: row[k] for k in MSMARCO_FEATURES} for row in split],
                          features=MSMARCO_FEATURES).to_parquet(
            folder / "v1.1" / f"{name}-00000-of-00001.parquet")
    import yaml

    card_info = yaml.safe_load(CARD_INFO.read_text(encoding="utf-8"))  # the hub card's entry
    card = {"configs": [{"config_name": "v1.1", "data_files": [
                {"split": name, "path": f"v1.1/{name}-*"} for name in splits]}],
            "dataset_info": [{"config_name": "v1.1", "features": card_info["features"],
                              "splits": [{"name": name, "num_examples": len(split)}
                                         for name, split in splits.items()]}]}
    (folder / "README.md").write_text(
        "---\n" + yaml.safe_dump(card, sort_keys=False) + "---\n\n"
        "microsoft/ms_marco v1.1 in the hub's layout, made from the mini MS MARCO "
        "(course_tools/full_dry_run.py).\n", encoding="utf-8")


def write_profiles_file(dry_run: DryRun) -> None:
    profile = {"name": PROFILE_NAME, "based_on": "full", "dataset": str(dry_run.dataset),
               **PROFILE_SIZES, "recipes": RECIPE_OVERRIDES}
    dry_run.profiles_file.write_text(json.dumps({"profiles": [profile]}, indent=2))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "build" or len(argv) > 2:
        print("usage: python -m course_tools.full_dry_run build [FOLDER]", file=sys.stderr)
        return 2
    try:
        dry_run = build(argv[1] if len(argv) == 2 else "build/full-dry-run")
    except ValueError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 2
    print(f"# built in {dry_run.folder}; run notebooks with this environment:")
    for name, value in dry_run.environment().items():
        print(f"export {name}={value}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
