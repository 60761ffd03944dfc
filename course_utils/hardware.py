"""Device and dtype, chosen from the hardware and independent of the profile.

bf16 only where the GPU supports it, fp16 on GPUs without bf16 (a T4), fp32 on CPU, so the
`tiny` profile runs on a GPU too and the `full` profile on any CUDA card.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def cuda_available() -> bool:
    return torch.cuda.is_available()


@dataclass(frozen=True)
class Hardware:
    device: str                 # "cuda" or "cpu"
    dtype: torch.dtype          # dtype for model weights and training math
    device_name: str            # e.g. "Tesla T4" or "cpu (2 cores)"
    gpu_count: int              # visible CUDA devices
    supports_bf16: bool         # bf16 matmuls are native on this device

    @property
    def trainer_precision(self) -> dict:
        """The `bf16`/`fp16` flags for `transformers.TrainingArguments`."""
        if self.device != "cuda":
            return {"bf16": False, "fp16": False}
        return {"bf16": self.dtype == torch.bfloat16, "fp16": self.dtype == torch.float16}

    def describe(self) -> str:
        dtype = str(self.dtype).replace("torch.", "")
        return f"{self.device_name} | device={self.device} | dtype={dtype} | gpus={self.gpu_count}"


def detect_hardware(prefer_cpu: bool = False) -> Hardware:
    """What this machine offers; `prefer_cpu=True` ignores any GPU."""
    if cuda_available() and not prefer_cpu:
        bf16 = torch.cuda.is_bf16_supported()
        return Hardware(
            device="cuda",
            dtype=torch.bfloat16 if bf16 else torch.float16,
            device_name=torch.cuda.get_device_name(0),
            gpu_count=torch.cuda.device_count(),
            supports_bf16=bf16,
        )
    import os

    return Hardware(
        device="cpu",
        dtype=torch.float32,
        device_name=f"cpu ({os.cpu_count()} cores)",
        gpu_count=0,
        supports_bf16=False,
    )


def single_device_map(hardware: Hardware) -> dict | None:
    """A device_map that keeps a model whole on GPU 0.

    Kaggle offers two T4s; `device_map="auto"` would split a small model across them and slow
    it down, so small models go on one device on purpose.
    """
    return {"": 0} if hardware.device == "cuda" else None
