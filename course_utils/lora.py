"""LoRA: train two small matrices per adapted layer instead of the layer's weight.

A frozen linear layer with weight W (d_out x d_in) gets an update of rank r:

    y = W x + (alpha / r) * B (A x)        A: (r x d_in), random;  B: (d_out x r), zeros

B starts at zero, so the adapted model starts exactly equal to the base model. Instead of the
d_out * d_in values of a full update, LoRA trains r * (d_in + d_out).

This module holds the LoRA settings of notebooks 03 (LoRA) and 04 (QLoRA) per profile, the
parameter count computed from a model config (to check PEFT's count against), and small
helpers for adapters on disk and for comparing two models' logits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from course_utils.memory_estimator import (
    LINEAR_MODULES,
    ModelShape,
    lora_parameter_count,
    resolve_lora_targets,
)
from course_utils.train import TrainSettings

ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class LoraSettings:
    r: int = 32                                        # rank of A (r x d_in) and B (d_out x r)
    alpha: int = 64                                    # the update is scaled by alpha / r
    dropout: float = 0.1                               # dropout on the adapter's input only
    target_modules: tuple[str, ...] | str = ATTENTION_MODULES  # layers to adapt, or "all-linear"

    def __post_init__(self):
        if self.r <= 0:
            raise ValueError(f"LoRA rank must be positive, got r={self.r}")
        if self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be positive, got alpha={self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got dropout={self.dropout}")
        if isinstance(self.target_modules, list):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if not self.target_modules:
            raise ValueError("target_modules is empty: name the layers to adapt, e.g. "
                             f"{ATTENTION_MODULES}, or 'all-linear'")
        if self.target_modules != "all-linear":
            resolve_lora_targets(self.target_modules)  # raises on unknown names

    @property
    def scaling(self) -> float:
        """alpha / r: how strongly B A is added to W."""
        return self.alpha / self.r

    @property
    def modules(self) -> tuple[str, ...]:
        """The adapted module names, with "all-linear" spelled out."""
        return resolve_lora_targets(self.target_modules)

    def replace(self, **changes) -> LoraSettings:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return {**asdict(self), "target_modules": list(self.modules), "scaling": self.scaling}

    def to_peft_config(self):
        """The `peft.LoraConfig` for a causal LM (biases stay frozen)."""
        from peft import LoraConfig

        targets = self.target_modules
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=targets if targets == "all-linear" else list(targets),
                          bias="none", task_type="CAUSAL_LM")


@dataclass(frozen=True)
class AdapterRecipe:
    """What notebook 03 or 04 trains in one profile."""

    lora: LoraSettings                                 # the adapter
    train: TrainSettings                               # optimizer, steps and batches
    sweep_ranks: tuple[int, ...] = field(default=())   # ranks compared in notebook 03

    def __post_init__(self):
        if any(r <= 0 for r in self.sweep_ranks):
            raise ValueError(f"sweep ranks must be positive, got {self.sweep_ranks}")


def default_recipe(notebook: str, profile, device: str = "cpu") -> AdapterRecipe:
    """The LoRA (notebook "03...") or QLoRA ("04...") settings of a profile.

    full: the original course: LoRA r=32, alpha=64, q/k/v/o, dropout 0.1, lr 1e-4; QLoRA r=32,
    alpha=64, all linear layers, dropout 0.05, lr 2e-4, paged 8-bit AdamW on CUDA, gradient
    checkpointing. Batches
    and steps as notebook 02 (batch 2 x accumulation 8, one epoch), so the three methods see
    the same data. tiny: same adapters and the same 8 steps as notebook 02, at learning rate
    3e-3 (one measured run each on the tiny test split: in 8 steps LoRA's token F1 went from
    0.22 to 0.30 at 1e-3 and to 0.49 at 3e-3; QLoRA's from 0.20 to 0.22 at 5e-4 and to 0.38
    at 3e-3).
    device: "cuda" or "cpu"; paged 8-bit AdamW needs CUDA, a CPU uses plain AdamW.
    """
    from course_utils.profiles import get_profile
    from course_utils.train import default_settings

    profile = get_profile(profile) if isinstance(profile, str) else profile
    base = default_settings("02", profile)  # same batches and steps as full fine-tuning
    kind = notebook[:2]
    if kind == "03":
        lora = LoraSettings(r=32, alpha=64, dropout=0.1, target_modules=ATTENTION_MODULES)
        lr = 1e-4 if profile.name == "full" else 3e-3
        ranks = (4, 8, 16, 32) if profile.name == "full" else (8, 32)
        return AdapterRecipe(lora=lora, train=base.replace(learning_rate=lr), sweep_ranks=ranks)
    if kind == "04":
        lora = LoraSettings(r=32, alpha=64, dropout=0.05, target_modules="all-linear")
        lr = 2e-4 if profile.name == "full" else 3e-3
        optim = "paged_adamw_8bit" if device == "cuda" else "adamw_torch"
        # the original relies on prepare_model_for_kbit_training's gradient checkpointing;
        # tiny skips it: at 135M parameters it only costs time
        return AdapterRecipe(lora=lora, train=base.replace(
            learning_rate=lr, optim=optim, gradient_checkpointing=profile.name == "full"))
    raise ValueError(f"no LoRA recipe for notebook {notebook!r}; known: 03 (LoRA), 04 (QLoRA)")


# --- counting parameters ------------------------------------------------------------------------


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters of a model. For a 4-bit model PEFT's
    `get_nb_trainable_parameters` counts packed weights as unpacked; this counts stored
    elements, so call it on models without quantized layers or use PEFT's count."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def expected_lora_parameters(config, settings: LoraSettings) -> int:
    """LoRA parameters computed from the config alone: layers x sum of r * (d_in + d_out)."""
    return lora_parameter_count(ModelShape.from_config(config), settings.r, settings.modules)


def lora_parameter_table(config, settings: LoraSettings) -> list[dict]:
    """One row per adapted module of one layer: its shape, a full update's size and LoRA's."""
    shapes = ModelShape.from_config(config).linear_shapes()
    rows = []
    for name in settings.modules:
        d_in, d_out = shapes[name]
        rows.append({"module": name, "d_in": d_in, "d_out": d_out,
                     "full update d_out*d_in": d_in * d_out,
                     "LoRA r*(d_in+d_out)": settings.r * (d_in + d_out),
                     "share": settings.r * (d_in + d_out) / (d_in * d_out)})
    return rows


# --- training one adapter -----------------------------------------------------------------------


def train_adapter(model_id: str, settings: LoraSettings, train_settings: TrainSettings,
                  train_rows, validation_rows, output_dir, hardware=None,
                  data_collator=None) -> dict:
    """Load a fresh base model, add one adapter, train it, save it; return what it measured.

    The rank sweep of notebook 03 calls this once per rank. Returns {"r", "trainable
    parameters", "eval loss" (after the last step), "seconds per step", "adapter"
    (folder of the saved adapter)}. The model is freed before returning.
    """
    import gc

    from peft import get_peft_model

    from course_utils.models import load_causal_lm
    from course_utils.train import train

    base, tokenizer = load_causal_lm(model_id, hardware=hardware)
    model = get_peft_model(base, settings.to_peft_config())
    trainable, _ = model.get_nb_trainable_parameters()
    run = train(model, tokenizer, train_rows, validation_rows, train_settings, output_dir,
                data_collator=data_collator, hardware=hardware)
    adapter_dir = Path(output_dir) / "adapter"
    model.save_pretrained(adapter_dir)
    result = {"r": settings.r, "trainable parameters": trainable,
              "eval loss": run.metrics["last_eval_loss"],
              "seconds per step": run.metrics["seconds_per_step"], "adapter": str(adapter_dir)}
    del model, base, run
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


# --- adapters on disk, comparing models -------------------------------------------------------


def folder_size_mib(folder) -> float:
    """Size of every file under a folder, in MiB (an adapter or a saved model)."""
    files = [p for p in Path(folder).rglob("*") if p.is_file()]
    if not files:
        raise FileNotFoundError(f"{folder} holds no files: save the model or adapter first")
    return sum(p.stat().st_size for p in files) / 2**20


@torch.no_grad()
def logits_of(model, batch: dict) -> torch.Tensor:
    """Logits (B, T, vocab) of a batch in eval mode (dropout off), in fp32 on the CPU."""
    was_training = model.training
    model.eval()
    try:
        batch = {k: v.to(model.device) for k, v in batch.items() if k != "labels"}
        return model(**batch).logits.float().cpu()
    finally:
        model.train(was_training)


def max_logit_difference(model_a, model_b, batch: dict) -> float:
    """Largest absolute difference between two models' logits on a batch (all positions)."""
    return (logits_of(model_a, batch) - logits_of(model_b, batch)).abs().max().item()


__all__ = ["ATTENTION_MODULES", "LINEAR_MODULES", "AdapterRecipe", "LoraSettings",
           "count_parameters", "default_recipe", "expected_lora_parameters", "folder_size_mib",
           "logits_of", "lora_parameter_table", "max_logit_difference"]
