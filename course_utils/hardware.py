"""Which device and number format does this machine offer?

Chosen from the hardware, independently of the profile: bf16 only where the GPU computes it
natively (compute capability 8.0 or newer: A100, L4, H100), fp16 on older GPUs such as the T4
(where `torch.cuda.is_bf16_supported()` says True by default because bf16 can be *emulated*,
slowly), fp32 on a CPU. So the `tiny` profile runs on a GPU too and `full` on any CUDA card.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


def cuda_available() -> bool:
    return torch.cuda.is_available()


def native_bf16(device_index: int = 0) -> bool:
    """True where the GPU has bf16 tensor cores (compute capability >= 8.0), not emulation."""
    major, _ = torch.cuda.get_device_capability(device_index)
    return major >= 8


@dataclass(frozen=True)
class Hardware:
    device: str                 # "cuda" or "cpu"
    dtype: torch.dtype          # 16-bit compute dtype on a GPU, fp32 on a CPU
    device_name: str            # e.g. "Tesla T4" or "cpu (2 cores)"
    gpu_count: int              # visible CUDA devices
    supports_bf16: bool         # bf16 matmuls are native on this device

    @property
    def bf16(self) -> bool:
        """`TrainingArguments(bf16=...)`: mixed precision in bf16 (native-bf16 GPUs only)."""
        return self.device == "cuda" and self.dtype == torch.bfloat16

    @property
    def fp16(self) -> bool:
        """`TrainingArguments(fp16=...)`: mixed precision in fp16 (GPUs without bf16)."""
        return self.device == "cuda" and self.dtype == torch.float16

    @property
    def half_dtype(self) -> torch.dtype:
        """The 16-bit format for weights: bf16, or fp16 on GPUs without native bf16."""
        return torch.float16 if self.device == "cuda" and not self.supports_bf16 \
            else torch.bfloat16

    @property
    def device_map(self) -> dict | None:
        """A device_map that keeps a model whole on GPU 0 (None on a CPU).

        Kaggle offers two T4s; `device_map="auto"` would split a small model across them and
        slow it down, so models go on one device on purpose.
        """
        return {"": 0} if self.device == "cuda" else None

    def describe(self) -> str:
        dtype = str(self.dtype).replace("torch.", "")
        return f"{self.device_name} | device={self.device} | dtype={dtype} | gpus={self.gpu_count}"


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
        )
    return Hardware(device="cpu", dtype=torch.float32, device_name=f"cpu ({os.cpu_count()} cores)",
                    gpu_count=0, supports_bf16=False)
