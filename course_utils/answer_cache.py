"""Has this exact model already answered these exact prompts? A disk cache of greedy answers.

In the tiny profile notebooks 01-03 ask the same base model (the same weights) the same
questions: 02 and 03 score the base model's answers to the same test split, and 01-03 take the
same forgetting probe of the base before training. Greedy decoding is deterministic, so the
second notebook can read the first one's answers instead of generating them again.

An entry is keyed by everything that decides the answers: a SHA-256 of every weight tensor (its
name, dtype, shape and bytes: a trained model, an adapter or another precision is another key),
the model's class, config and generation config, the tokenizer, the device, the torch and
transformers versions, the prompts and every decoding option. Only greedy decoding is cached.

Where: $COURSE_ANSWER_CACHE, else <course cache>/answers (course_utils.config.cache_dir).
COURSE_ANSWER_CACHE=off turns the cache off (the unit tests do, through tests/conftest.py). A
file that cannot be read back is set aside as `<name>.damaged` and the answers are generated
again; a cache folder that cannot be written only costs the time saved.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

ENV_VAR = "COURSE_ANSWER_CACHE"
OFF = {"0", "off", "false", "no", "none"}
FORMAT = 1


def cache_folder() -> Path | None:
    """The folder answers are kept in, or None when the cache is off."""
    setting = os.environ.get(ENV_VAR, "").strip()
    if setting.lower() in OFF:
        return None
    if setting:
        return Path(setting).expanduser()
    from course_utils.config import CacheUnwritableError, cache_dir

    try:
        return cache_dir() / "answers"
    except CacheUnwritableError:
        return None


def weights_fingerprint(model) -> str:
    """SHA-256 over every tensor of the model's state dict: names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if not isinstance(tensor, torch.Tensor):
            continue
        values = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{values.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(values.view(torch.uint8).numpy())  # the raw bytes, whatever the dtype
    return digest.hexdigest()


def _tokenizer_identity(tokenizer) -> dict:
    return {"class": type(tokenizer).__name__, "size": len(tokenizer),
            "name": Path(str(getattr(tokenizer, "name_or_path", ""))).name,
            "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}


def cache_key(model, tokenizer, prompts: list[str], options: dict) -> dict:
    """Everything the answers depend on, as plain JSON."""
    import transformers

    config = model.config.to_dict()
    config.pop("_name_or_path", None)  # the same weights from another folder answer the same
    generation = getattr(model, "generation_config", None)
    parameter = next(model.parameters(), None)
    return {
        "format": FORMAT,
        "weights": weights_fingerprint(model),
        "model_class": type(model).__name__,
        "config": json.dumps(config, sort_keys=True, default=str),
        "generation_config": generation.to_json_string() if generation is not None else None,
        "tokenizer": _tokenizer_identity(tokenizer),
        "device": parameter.device.type if parameter is not None else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "prompts": list(prompts),
        "options": json.dumps(options, sort_keys=True, default=str),
    }


def _file_name(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32] + ".json"


def _read(path: Path, key: dict) -> dict | None:
    """The stored entry, or None when there is none; a damaged file is set aside."""
    if not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        if entry["key"] != key:  # a file named for this key must hold this key
            raise ValueError("it holds another key")
        texts, cut = entry["texts"], entry["cut"]
        if len(texts) != len(key["prompts"]) or len(cut) != len(texts):
            raise ValueError("the answers do not match the prompts in number")
        return {"texts": [str(text) for text in texts], "cut": [bool(flag) for flag in cut]}
    except (OSError, ValueError, KeyError, TypeError) as error:
        aside = path.with_suffix(".damaged")
        try:
            path.replace(aside)
        except OSError:
            aside = path
        warnings.warn(f"The cached answers in {path} could not be read ({error}); they were set "
                      f"aside as {aside.name} and are generated again.", stacklevel=3)
        return None


def _write(path: Path, key: dict, texts: list[str], cut: list[bool]) -> None:
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging.write_text(json.dumps({"key": key, "texts": texts, "cut": cut}),
                           encoding="utf-8")
        staging.replace(path)  # atomic: a reader sees the old file or the whole new one
    except OSError as error:
        try:
            staging.unlink(missing_ok=True)
        except OSError:
            pass  # the folder itself is missing or not a folder
        warnings.warn(f"Answers could not be cached in {path.parent} ({error}); the course "
                      f"works without the cache. Set {ENV_VAR} to a writable folder, or to "
                      f"'off'.", stacklevel=3)


def cached_answers(model, tokenizer, prompts: list[str], options: dict,
                   generate: Callable[[], tuple[list[str], list[bool]]]
                   ) -> tuple[list[str], list[bool], bool]:
    """(texts, cut, from_cache) for greedy `options`: read back from the cache, or `generate()`d
    and stored."""
    folder = cache_folder()
    if folder is None or options.get("do_sample"):
        return (*generate(), False)
    key = cache_key(model, tokenizer, prompts, options)
    path = folder / _file_name(key)
    stored = _read(path, key)
    if stored is not None:
        return stored["texts"], stored["cut"], True
    texts, cut = generate()
    _write(path, key, list(texts), list(cut))
    return texts, cut, False
