"""Which device and number format does this machine offer, and which format does each job use?

Chosen from the hardware, independently of the profile: bf16 only where the GPU computes it
natively (compute capability 8.0 or newer: A100, L4, H100), fp16 on older GPUs such as the T4
(where `torch.cuda.is_bf16_supported()` says True by default because bf16 can be *emulated*,
slowly), fp32 on a CPU. So the `tiny` profile runs on a GPU too and `full` on any CUDA card.

Every precision choice of the notebooks is a named property of `Hardware`, and
`precision()` / `precision_summary()` say each choice with its reason:

| choice | CPU | T4 (7.5) | L4, A100, H100 (>= 8.0) |
|---|---|---|---|
| Trainer mixed precision (`bf16`, `fp16`) | none | fp16 | bf16 |
| `full_finetuning_dtype`: weights the optimizer updates | fp32 | fp32 | fp32 |
| `lora_base_dtype`: frozen weights under LoRA adapters | fp32 | fp32 | bf16 |
| `four_bit_compute_dtype`: `bnb_4bit_compute_dtype` | fp32 | fp16 | bf16 |
| `half_dtype`: a model stored in 16 bits | bf16 | fp16 | bf16 |

fp16 keeps more digits than bf16 but reaches only 65,504; bf16 reaches fp32's range
(about 3e38). Large activations, which Qwen-family models have, overflow fp16 and turn into
inf, then NaN. That is why the T4 keeps weights in fp32 wherever it trains: the residual stream
between layers then stays fp32 and only the matrix products run in fp16 (autocast).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

FP16_MAX = torch.finfo(torch.float16).max  # 65504.0


def cuda_available() -> bool:
    return torch.cuda.is_available()


def native_bf16(device_index: int = 0) -> bool:
    """True where the GPU has bf16 tensor cores (compute capability >= 8.0), not emulation."""
    major, _ = torch.cuda.get_device_capability(device_index)
    return major >= 8


def dtype_name(dtype: torch.dtype) -> str:
    """"float32", "bfloat16", "float16": a dtype as a results file stores it."""
    return str(dtype).replace("torch.", "")


_SHORT = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class Hardware:
    device: str                 # "cuda" or "cpu"
    dtype: torch.dtype          # 16-bit compute dtype on a GPU, fp32 on a CPU
    device_name: str            # e.g. "Tesla T4" or "cpu (2 cores)"
    gpu_count: int              # visible CUDA devices
    supports_bf16: bool         # bf16 matmuls are native on this device
    compute_capability: tuple[int, int] | None = None  # (7, 5) on a T4; None on a CPU

    @property
    def bf16(self) -> bool:
        """`TrainingArguments(bf16=...)`: mixed precision in bf16 (native-bf16 GPUs only)."""
        return self.device == "cuda" and self.dtype == torch.bfloat16

    @property
    def fp16(self) -> bool:
        """`TrainingArguments(fp16=...)`: mixed precision in fp16 (GPUs without bf16)."""
        return self.device == "cuda" and self.dtype == torch.float16

    @property
    def full_finetuning_dtype(self) -> torch.dtype:
        """The dtype to load a model in whose every weight trains: fp32, on every device.

        An AdamW update is about the size of the learning rate, smaller than the gap between
        neighbouring 16-bit numbers near a typical weight, so in 16 bits most updates would
        round away. The Trainer's mixed precision (`bf16`/`fp16`) computes in 16 bits and
        applies the updates to these fp32 weights.
        """
        return torch.float32

    @property
    def lora_base_dtype(self) -> torch.dtype:
        """The dtype to load a frozen base model in that LoRA adapters train on.

        bf16 on GPUs that compute it natively: frozen weights need no fp32 copy for the
        optimizer, and bf16 halves their memory with fp32's range. fp32 on a T4: fp16 weights
        would put the residual stream between layers in fp16, where Qwen-family activations
        overflow; with fp32 weights only the matrix products run in fp16 (the Trainer's
        `fp16=True` autocast) and a 0.6B model still fits easily. fp32 on a CPU, which
        computes in fp32.
        """
        return torch.bfloat16 if self.bf16 else torch.float32

    @property
    def four_bit_compute_dtype(self) -> torch.dtype:
        """`BitsAndBytesConfig(bnb_4bit_compute_dtype=...)`: what each 4-bit weight is
        dequantized to for a matrix product. bf16 on native-bf16 GPUs, fp16 on a T4 (the
        fastest format it computes natively), fp32 on a CPU."""
        return self.dtype

    @property
    def half_dtype(self) -> torch.dtype:
        """The 16-bit format to store a whole model in (notebook 04's 16-bit variant, the
        16-bit copy a QLoRA adapter is merged into): bf16, or fp16 on GPUs without native bf16.
        A CPU uses bf16, which keeps fp32's range."""
        return torch.float16 if self.device == "cuda" and not self.supports_bf16 \
            else torch.bfloat16

    @property
    def device_map(self) -> dict | None:
        """A device_map that keeps a model whole on GPU 0 (None on a CPU).

        Kaggle offers two T4s; `device_map="auto"` would split a small model across them and
        slow it down, so models go on one device on purpose.
        """
        return {"": 0} if self.device == "cuda" else None

    @property
    def mixed_precision(self) -> str:
        """"bf16", "fp16" or "no": the Trainer's mixed precision on this device."""
        return "bf16" if self.bf16 else "fp16" if self.fp16 else "no"

    def _capability_text(self) -> str:
        if self.compute_capability is None:
            return "this GPU"
        return "compute capability {}.{}".format(*self.compute_capability)

    def _choices(self) -> list[tuple[str, str, object, str]]:
        """(key, label, value, reason) of every precision choice."""
        if self.device != "cuda":
            training = "a CPU computes in fp32; mixed precision is for GPUs"
            weights = "a CPU computes in fp32"
            half = "a CPU stores and runs bf16, which keeps fp32's range"
        elif self.bf16:
            training = (f"{self._capability_text()} computes bf16 natively, and bf16 has "
                        f"fp32's range: activations do not overflow")
            weights = ("frozen weights need no fp32 copy for the optimizer; bf16 halves their "
                       "memory and keeps fp32's range")
            half = f"{self._capability_text()} computes bf16 natively"
        else:
            training = (f"{self._capability_text()} has no native bf16 (it needs 8.0 or newer: "
                        f"L4, A100, H100); bf16 would only be emulated, slowly")
            weights = (f"fp16 weights would overflow (fp16 tops out at {FP16_MAX:,.0f}) in "
                       f"Qwen-family activations; fp32 weights keep the residual stream in fp32 "
                       f"and only the matrix products run in fp16 (autocast)")
            half = (f"{self._capability_text()} has no native bf16; fp16 tops out at "
                    f"{FP16_MAX:,.0f}, so a 16-bit model's forward is checked for overflow")
        return [
            ("mixed_precision", "Trainer mixed precision", self.mixed_precision, training),
            ("full_finetuning_dtype", "weights of full fine-tuning", self.full_finetuning_dtype,
             "the optimizer updates fp32 weights: 16-bit weights would round most updates away"),
            ("lora_base_dtype", "frozen base under LoRA", self.lora_base_dtype, weights),
            ("four_bit_compute_dtype", "4-bit compute dtype", self.four_bit_compute_dtype,
             "4-bit weights are dequantized to the device's fastest native format"
             if self.device == "cuda" else "a CPU computes in fp32"),
            ("half_dtype", "16-bit model", self.half_dtype, half),
        ]

    def precision(self) -> dict:
        """Every precision choice and its reason, in plain JSON types for a results file:

            {"device": "cuda", "device_name": "Tesla T4", "compute_capability": "7.5",
             "native_bf16": False, "bf16": False, "fp16": True, "mixed_precision": "fp16",
             "full_finetuning_dtype": "float32", "lora_base_dtype": "float32",
             "four_bit_compute_dtype": "float16", "half_dtype": "float16",
             "why": {"mixed_precision": "compute capability 7.5 has no native bf16 ...", ...}}
        """
        capability = self.compute_capability
        record = {"device": self.device, "device_name": self.device_name,
                  "compute_capability": f"{capability[0]}.{capability[1]}" if capability else None,
                  "native_bf16": self.supports_bf16, "bf16": self.bf16, "fp16": self.fp16}
        choices = self._choices()
        for key, _, value, _ in choices:
            record[key] = dtype_name(value) if isinstance(value, torch.dtype) else value
        record["why"] = {key: reason for key, _, _, reason in choices}
        return record

    def precision_summary(self) -> str:
        """Printable lines: every precision choice on this machine, and why."""
        where = self.device_name if self.device != "cuda" else \
            f"{self.device_name}, {self._capability_text()}"
        lines = [f"Precision on {where}:"]
        for _, label, value, reason in self._choices():
            shown = _SHORT.get(value, value) if isinstance(value, torch.dtype) else value
            if label == "Trainer mixed precision":
                shown = f"{shown} ({shown}=True)" if shown != "no" else "none (fp32)"
            lines.append(f"- {label}: {shown}: {reason}")
        return "\n".join(lines)

    def describe(self) -> str:
        capability = "" if self.compute_capability is None else \
            " | compute capability {}.{}".format(*self.compute_capability)
        return (f"{self.device_name} | device={self.device} | dtype={dtype_name(self.dtype)}"
                f"{capability} | gpus={self.gpu_count}")


def detect_hardware(prefer_cpu: bool = False) -> Hardware:
    """What this machine offers; `prefer_cpu=True` ignores any GPU."""
    if cuda_available() and not prefer_cpu:
        bf16 = native_bf16(0)
        return Hardware(
            device="cuda",
            dtype=torch.bfloat16 if bf16 else torch.float16,
            device_name=torch.cuda.get_device_name(0),
            gpu_count=torch.cuda.device_count(),
            supports_bf16=bf16,
            compute_capability=tuple(torch.cuda.get_device_capability(0)),
        )
    return Hardware(device="cpu", dtype=torch.float32, device_name=f"cpu ({os.cpu_count()} cores)",
                    gpu_count=0, supports_bf16=False)
