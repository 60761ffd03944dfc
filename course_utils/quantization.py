"""4-bit and 8-bit weights with bitsandbytes: what they save, what they cost, how to merge.

NF4 ("4-bit NormalFloat") stores each weight as one of 16 levels placed at quantiles of a
normal distribution, scaled per block of 64 weights by the block's largest absolute value
(absmax). Double quantization stores those absmax scales in 8 bits too. QLoRA trains LoRA
adapters on top of such a frozen 4-bit base.

Loading itself lives in course_utils/models.py (`load_causal_lm(..., quantization="4bit")`);
this module gives the load arguments of each footprint variant, quantizes single tensors to
show the rounding, and shows why an adapter cannot simply be merged into 4-bit weights.
"""

from __future__ import annotations

import gc

import torch

from course_utils.hardware import Hardware

FOOTPRINT_VARIANTS = ("32bit", "16bit", "8bit", "4bit")


def nf4_bits_per_parameter(block_size: int = 64, double_quant: bool = True,
                           second_block_size: int = 256) -> float:
    """Bits one weight costs in bitsandbytes NF4, scales included.

    Without double quantization every block of `block_size` weights shares one fp32 absmax:
    4 + 32/64 = 4.5 bits. With it, the absmax values are stored in 8 bits, with one fp32
    scale per `second_block_size` of them: 4 + 8/64 + 32/(64*256) = 4.127 bits.
    """
    if block_size <= 0 or second_block_size <= 0:
        raise ValueError(f"block sizes must be positive, got {block_size}, {second_block_size}")
    if double_quant:
        return 4 + 8 / block_size + 32 / (block_size * second_block_size)
    return 4 + 32 / block_size


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


# --- footprints --------------------------------------------------------------------------------


def variant_arguments(variant: str, hardware: Hardware) -> dict:
    """The load_causal_lm arguments of "32bit", "16bit", "8bit" or "4bit"."""
    if variant not in FOOTPRINT_VARIANTS:
        raise ValueError(f"variant must be one of {FOOTPRINT_VARIANTS}, got {variant!r}")
    half = torch.float16 if (hardware.device == "cuda" and not hardware.supports_bf16) \
        else torch.bfloat16
    return {"32bit": {"dtype": torch.float32}, "16bit": {"dtype": half},
            "8bit": {"quantization": "8bit"}, "4bit": {"quantization": "4bit"}}[variant]


def free_memory(device: str = "cpu") -> None:
    """Collect garbage (and empty CUDA's cache) so the next measurement starts clean."""
    gc.collect()
    if device == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def count_4bit_layers(model) -> tuple[int, int]:
    """(4-bit linear layers, of them with the CPU repacking fast path still on).

    course_utils.models.disable_cpu_4bit_repacking turns that path off: on CPUs with
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
