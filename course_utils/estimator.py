"""How much memory will a training run need, and how many parameters does LoRA train?

Training memory has five parts, each computed from the model config:

- weights: every parameter, in the load dtype (QLoRA: 4-bit NF4 linear layers, the rest fp32);
  LoRA adapters are kept in fp32 by PEFT whatever the base dtype;
- gradients: one per TRAINABLE parameter (all of them in full fine-tuning, the adapters only
  in LoRA/QLoRA);
- optimizer states: AdamW keeps two per trainable parameter (8-bit AdamW: one byte each);
- activations: the tensors autograd saves in the forward pass for the backward pass;
- logits: the (batch, seq, vocab) scores and their log-softmax, in fp32 for the loss. With a
  49k or 152k vocabulary they rival all other activations together.

Activations are counted from first principles: for each operation of a Llama/Qwen decoder layer,
which tensors autograd keeps (tests/test_estimator.py checks the count against the
bytes autograd actually saves). Two more parts live only while activations do:

- autocast copies: mixed precision with fp32 weights (Trainer `bf16=True`/`fp16=True`) casts
  every weight a matmul uses to 16 bits, and autograd keeps those copies for the backward pass
  (2 bytes per linear-layer weight);
- accumulated gradients: with one optimizer step per pass the gradients fill up only while the
  backward pass frees activations, and peak in the optimizer step, which also makes scratch
  copies ("step scratch"). With gradient accumulation the gradients of the earlier passes are
  still there while the next pass builds its activations.

So

    peak = weights + optimizer states + overhead
           + max(activations + logits + autocast copies [+ gradients when accumulating],
                 gradients + step scratch)

Inference (an evaluation loss, or `generate`) is estimated by `estimate_inference_memory`:
weights, the key/value cache, one layer's temporaries and the logits (all positions in fp32
for a loss; the last position only for `generate`, which asks the model for no more).

What is approximate, and why:
- overhead: temporaries (matmul workspaces, attention buffers) and allocator slack, a share of
  the rest fitted to measured CPU runs of SmolLM2 (about 5 %), not derived;
- step scratch: PyTorch's AdamW on a CPU updates one tensor at a time and makes two temporary
  copies of it (square root of the second moment, then its division); on CUDA it updates all
  tensors at once (`foreach`) with one temporary copy of every state;
- mixed precision: tensors that are fp32 inside a bf16 run (norms upcast by
  `prepare_model_for_kbit_training`, autocast copies) are counted in the compute dtype;
- only Llama-family decoders (Llama, Mistral, Qwen2, Qwen3, SmolLM2) are modelled exactly;
  GPT-2 (DistilGPT2 of notebook 01) is sized with the same counts adapted to its plain MLP and
  learned positions, without its dropout masks: a rough figure for a model far below any GPU's
  memory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

MIB = 2**20
METHODS = ("full", "lora", "qlora")
OPTIMIZERS = ("adamw", "adamw_8bit", "sgd")
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gpt2")
# bytes of one optimizer state value per trainable parameter (two states for AdamW)
_STATE_BYTES = {"adamw": None, "adamw_8bit": 1.0, "sgd": 0.0}   # None: the parameter's dtype
# overhead as a share of everything else: fitted to CPU runs of SmolLM2 (see module docstring);
# CUDA takes the same share, not verified on a GPU
OVERHEAD_FRACTION = {"cpu": 0.05, "cuda": 0.05}
DEVICES = tuple(OVERHEAD_FRACTION)

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
           "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


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


def dtype_bytes(dtype) -> int:
    """2 for bf16/fp16, 4 for fp32; accepts a torch.dtype or a name like "bf16"."""
    if isinstance(dtype, str):
        if dtype.lower() not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}")
        dtype = _DTYPES[dtype.lower()]
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"training dtype must be float32, bfloat16 or float16, got {dtype}")
    return torch.empty((), dtype=dtype).element_size()


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Llama-family decoder that memory depends on."""

    hidden_size: int                 # h: width of the residual stream
    num_layers: int                  # L: decoder layers
    intermediate_size: int           # i: width of the MLP
    vocab_size: int                  # V: rows of the embedding and of the output layer
    num_heads: int                   # query heads
    num_kv_heads: int                # key/value heads (fewer than num_heads with GQA)
    head_dim: int                    # width of one head
    tie_word_embeddings: bool        # output layer shares the embedding matrix
    attention_bias: bool = False     # q/k/v projections have biases (Qwen2)
    qk_norm: bool = False            # RMSNorm on each query and key head (Qwen3)
    gated_mlp: bool = True           # SiLU(gate) * up (Llama family); False: GELU(fc) (GPT-2)
    learned_positions: int = 0       # rows of a learned position embedding (GPT-2: 1024)
    biases: bool = False             # every linear layer and norm has a bias (GPT-2)

    @classmethod
    def from_config(cls, config) -> ModelShape:
        model_type = getattr(config, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"the estimator models Llama-family decoders and GPT-2 "
                             f"{SUPPORTED_MODEL_TYPES}, got model_type={model_type!r}")
        heads = config.num_attention_heads
        if model_type == "gpt2":
            return cls(hidden_size=config.n_embd, num_layers=config.n_layer,
                       intermediate_size=config.n_inner or 4 * config.n_embd,
                       vocab_size=config.vocab_size, num_heads=heads, num_kv_heads=heads,
                       head_dim=config.n_embd // heads, tie_word_embeddings=True,
                       gated_mlp=False, learned_positions=config.n_positions, biases=True)
        return cls(
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            intermediate_size=config.intermediate_size,
            vocab_size=config.vocab_size,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            attention_bias=bool(getattr(config, "attention_bias", model_type == "qwen2")),
            qk_norm=model_type == "qwen3",
        )

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer in one decoder layer."""
        h, i = self.hidden_size, self.intermediate_size
        shapes = {"q_proj": (h, self.q_dim), "k_proj": (h, self.kv_dim),
                  "v_proj": (h, self.kv_dim), "o_proj": (self.q_dim, h),
                  "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
        if not self.gated_mlp:
            del shapes["gate_proj"]
        return shapes

    def linear_parameters(self) -> int:
        """Weights of all decoder linear layers: the part QLoRA stores in 4 bits."""
        return self.num_layers * sum(d_in * d_out for d_in, d_out in self.linear_shapes().values())

    def parameter_count(self) -> int:
        """All parameters: embeddings, decoder layers, norms, output layer."""
        h, L = self.hidden_size, self.num_layers
        per_layer_other = 2 * h                                   # two RMSNorm weights
        if self.attention_bias:
            per_layer_other += self.q_dim + 2 * self.kv_dim
        if self.qk_norm:
            per_layer_other += 2 * self.head_dim
        final_norm = h
        if self.biases:                                           # GPT-2: every layer has one
            per_layer_other += 2 * h + sum(d_out for _, d_out in self.linear_shapes().values())
            final_norm = 2 * h
        embeddings = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        embeddings += self.learned_positions * h
        return embeddings + self.linear_parameters() + L * per_layer_other + final_norm


def resolve_lora_targets(targets) -> tuple[str, ...]:
    """Module names LoRA adapts: a list of names, or "all-linear" for all seven."""
    if targets is None or targets == "all-linear":
        return LINEAR_MODULES
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    unknown = [t for t in targets if t not in LINEAR_MODULES]
    if unknown:
        raise ValueError(f"unknown LoRA target modules {unknown}; "
                         f"use names from {LINEAR_MODULES} or 'all-linear'")
    return targets


def lora_parameter_count(shape: ModelShape, rank: int, targets) -> int:
    """Trainable LoRA parameters: per adapted layer r * (d_in + d_out), over all layers."""
    shapes = shape.linear_shapes()
    return shape.num_layers * sum(rank * sum(shapes[t]) for t in resolve_lora_targets(targets))


def expected_lora_parameters(config, rank: int, targets) -> int:
    """LoRA parameters computed from a model config alone: layers x sum of r * (d_in + d_out)."""
    return lora_parameter_count(ModelShape.from_config(config), rank, targets)


def lora_parameter_table(config, rank: int, targets) -> list[dict]:
    """One row per adapted module of one layer: its shape, a full update's size and LoRA's."""
    shapes = ModelShape.from_config(config).linear_shapes()
    rows = []
    for name in resolve_lora_targets(targets):
        d_in, d_out = shapes[name]
        rows.append({"module": name, "d_in": d_in, "d_out": d_out,
                     "full update d_out*d_in": d_in * d_out,
                     "LoRA r*(d_in+d_out)": rank * (d_in + d_out),
                     "share": rank * (d_in + d_out) / (d_in * d_out)})
    return rows


def activation_elements_per_token(shape: ModelShape, method: str, lora_rank: int = 0,
                                  lora_targets=None, lora_dropout: float = 0.0,
                                  padded_len: int = 0) -> float:
    """Values autograd saves per token in ONE decoder layer during the forward pass.

    Full fine-tuning (every weight needs a gradient, so every linear layer keeps its input):
      2 RMSNorms x (input, normalized) = 4h; q/k/v input h; attention keeps q, k, v and its
      output (k and v repeated to all heads when a padding mask forces `repeat_kv`);
      MLP input h, gate output, SiLU output, up output and their product = 4i.
    LoRA/QLoRA (frozen base): frozen linear layers keep nothing and a norm with a frozen
      weight keeps only its input (2h); the MLP keeps 3i. Each adapter keeps the input of A
      (with dropout a fresh copy plus the dropout mask: 2 d_in; without dropout the shared
      input, counted once) and the r-wide output of A.
    Padding (padded_len > 0, the padded sequence length): each layer keeps its own float copy
      of the (seq x seq) attention mask, padded_len values per token, and grouped-query
      attention repeats k and v to all heads.
    """
    h, i = shape.hidden_size, shape.intermediate_size
    kv = shape.q_dim if (padded_len and shape.num_kv_heads < shape.num_heads) else shape.kv_dim
    attention = 2 * shape.q_dim + 2 * kv + shape.num_heads     # q, out, k, v, log-sum-exp
    attention += padded_len                                    # this layer's mask row
    if shape.qk_norm:
        attention += shape.q_dim + shape.kv_dim                # inputs of the head norms
    if method == "full":
        if shape.qk_norm:
            attention += shape.q_dim + shape.kv_dim            # normalized heads
        # GPT-2's tanh-approximated GELU is written as five elementwise operations, each
        # keeping its input: about 6 i in all with the fc output (not checked against autograd)
        mlp = 4 * i if shape.gated_mlp else 6 * i
        return 4 * h + h + attention + h + mlp
    targets = resolve_lora_targets(lora_targets)
    shapes = shape.linear_shapes()
    mlp = 3 * i
    if lora_dropout > 0:
        adapters = sum(2 * shapes[t][0] for t in targets)
    else:
        inputs = {"attn_in": h if {"q_proj", "k_proj", "v_proj"} & set(targets) else 0,
                  "mlp_in": h if {"gate_proj", "up_proj"} & set(targets) else 0,
                  "down_in": i if "down_proj" in targets else 0}  # o_proj input = attn output
        adapters = sum(inputs.values())
    adapters += lora_rank * len(targets)
    return 2 * h + attention + mlp + adapters


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted peak training memory, in MiB, split by what holds it."""

    method: str                   # "full", "lora" or "qlora"
    weights_mib: float            # all parameters (quantized ones at 4.127 bits for QLoRA)
    gradients_mib: float          # one gradient per trainable parameter
    optimizer_mib: float          # optimizer states
    activations_mib: float        # tensors saved for the backward pass, all layers
    logits_mib: float             # logits, log-softmax and their gradients for the loss
    step_scratch_mib: float       # temporaries of the optimizer step
    overhead_mib: float           # other temporaries and allocator slack (fitted share)
    trainable_parameters: int     # parameters the optimizer updates
    total_parameters: int         # parameters of the base model (adapters not included)
    autocast_mib: float = 0.0     # 16-bit copies of fp32 weights kept for backward (mixed precision)
    accumulating: bool = False    # gradient accumulation: gradients coexist with activations

    @property
    def forward_mib(self) -> float:
        """What the end of a forward pass holds besides weights and optimizer states."""
        held = self.activations_mib + self.logits_mib + self.autocast_mib
        return held + (self.gradients_mib if self.accumulating else 0.0)

    @property
    def phase_mib(self) -> float:
        """The larger of the two phases: end of forward (activations, logits, autocast copies,
        and the gradients so far when accumulating) or optimizer step (gradients + scratch)."""
        return max(self.forward_mib, self.gradients_mib + self.step_scratch_mib)

    @property
    def total_mib(self) -> float:
        """The predicted peak."""
        return self.weights_mib + self.optimizer_mib + self.phase_mib + self.overhead_mib

    def components(self) -> dict[str, float]:
        return {"weights": self.weights_mib, "gradients": self.gradients_mib,
                "optimizer states": self.optimizer_mib, "activations": self.activations_mib,
                "logits (loss)": self.logits_mib, "autocast copies": self.autocast_mib,
                "step scratch": self.step_scratch_mib, "overhead": self.overhead_mib}

    def as_table(self, measured_mib: float | None = None) -> str:
        """A plain-text table of the parts, the predicted peak and, if given, the measured one."""
        lines = [f"{'component':<18}{'MiB':>10}", "-" * 28]
        lines += [f"{name:<18}{value:>10,.0f}" for name, value in self.components().items()]
        lines += ["-" * 28, f"{'predicted peak':<18}{self.total_mib:>10,.0f}"]
        if measured_mib is not None:
            error = (self.total_mib - measured_mib) / measured_mib
            lines.append(f"{'measured peak':<18}{measured_mib:>10,.0f}   (prediction {error:+.0%})")
        lines += ["peak = weights + optimizer states + overhead",
                  "       + max(activations + logits + autocast copies"
                  + (" + gradients (accumulating)" if self.accumulating else "") + ",",
                  "             gradients + step scratch)"]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {**asdict(self), "total_mib": self.total_mib}


def _check_arguments(method, optimizer, batch_size, seq_len, lora_rank, lora_dropout, device):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if batch_size <= 0 or seq_len <= 0:
        raise ValueError(f"batch_size and seq_len must be positive, got {batch_size}, {seq_len}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if method == "full" and lora_rank is not None:
        raise ValueError("lora_rank is for method='lora' or 'qlora', not full fine-tuning")
    if method != "full" and (lora_rank is None or lora_rank <= 0):
        raise ValueError(f"method={method!r} needs a positive lora_rank, got {lora_rank}")
    if not 0.0 <= lora_dropout < 1.0:
        raise ValueError(f"lora_dropout must be in [0, 1), got {lora_dropout}")


def _activation_values(shape: ModelShape, method, seq_len, lora_rank, lora_targets,
                       lora_dropout, device, padded, gradient_checkpointing, width) -> float:
    """Values saved for backward per token, all layers (dropout masks in value units)."""
    per_layer = activation_elements_per_token(shape, method, lora_rank or 0, lora_targets,
                                              lora_dropout, seq_len if padded else 0)
    first_layer_saving = 0.0
    if method != "full":
        targets = set(resolve_lora_targets(lora_targets))
        # the frozen embedding output needs no gradient: the first layer's input norm and
        # the dropout masks on its q/k/v inputs are not kept
        first_layer_saving = shape.hidden_size * (
            1 + (len(targets & {"q_proj", "k_proj", "v_proj"}) if lora_dropout > 0 else 0))
        if lora_dropout > 0 and device == "cuda":
            # a dropout mask is a float tensor on CPU but 1-byte booleans on CUDA
            masks = sum(shape.linear_shapes()[t][0] for t in targets)
            per_layer -= masks * (1 - 1 / width)
    if gradient_checkpointing:
        # each layer keeps only its input; one layer at a time is recomputed in full
        return shape.num_layers * shape.hidden_size + per_layer + 2 * shape.hidden_size
    return shape.num_layers * per_layer - first_layer_saving + 2 * shape.hidden_size  # + final norm


def estimate_training_memory(config, method: str, batch_size: int, seq_len: int,
                             dtype=torch.float32, optimizer: str = "adamw",
                             lora_rank: int | None = None, lora_targets=None,
                             gradient_checkpointing: bool = False, lora_dropout: float = 0.0,
                             device: str = "cuda", padded: bool = True,
                             param_dtype=None,
                             gradient_accumulation_steps: int = 1) -> MemoryEstimate:
    """Predict the peak memory of training a Llama-family model, in MiB.

    config: a transformers PretrainedConfig (or a ModelShape).
    method: "full", "lora" or "qlora" (4-bit NF4 base with double quantization).
    batch_size, seq_len: rows per forward pass and their padded length (use the longest row).
    dtype: compute dtype of activations ("fp32", "bf16", "fp16" or a torch.dtype), and of the
        weights unless param_dtype says otherwise.
    optimizer: "adamw", "adamw_8bit" (also the paged variant, whose states CUDA can page out
        to CPU memory) or "sgd" (plain SGD: no state).
    lora_rank, lora_targets: adapter rank and module names (or "all-linear") for LoRA/QLoRA.
    gradient_checkpointing: keep only each layer's input and recompute the rest in backward.
    lora_dropout: >0 makes every adapter keep a dropped-out copy of its input and the mask.
    device: "cuda" or "cpu" (dropout masks, optimizer scratch and overhead differ).
    padded: batches carry a padding mask (dynamic padding does), so every layer keeps a mask
        and grouped-query attention repeats k and v to all heads.
    param_dtype: weight dtype when it differs from dtype (fp16 mixed precision keeps fp32
        weights, gradients and optimizer states); None = dtype. fp32 weights with a 16-bit
        dtype on CUDA is the Trainer's mixed precision: autocast keeps a 16-bit copy of every
        linear weight for the backward pass.
    gradient_accumulation_steps: more than 1 keeps the gradients of earlier passes while the
        next pass builds its activations.
    """
    _check_arguments(method, optimizer, batch_size, seq_len, lora_rank, lora_dropout, device)
    if gradient_accumulation_steps < 1:
        raise ValueError(f"gradient_accumulation_steps must be at least 1, "
                         f"got {gradient_accumulation_steps}")
    shape = config if isinstance(config, ModelShape) else ModelShape.from_config(config)
    width = dtype_bytes(dtype)
    param_width = dtype_bytes(param_dtype) if param_dtype is not None else width
    total = shape.parameter_count()
    tokens = batch_size * seq_len

    # weights, and the parameters the optimizer updates
    if method == "full":
        weight_bytes = total * param_width
        trainable, train_width = total, param_width
        largest = shape.vocab_size * shape.hidden_size        # the embedding matrix
    else:
        trainable, train_width = lora_parameter_count(shape, lora_rank, lora_targets), 4
        largest = lora_rank * max(max(s) for s in shape.linear_shapes().values())
        if method == "lora":
            weight_bytes = total * param_width
        else:  # 4-bit linear layers; embeddings and norms upcast to fp32 for k-bit training
            quantized = shape.linear_parameters()
            weight_bytes = quantized * nf4_bits_per_parameter() / 8 + (total - quantized) * 4
        weight_bytes += trainable * 4                         # adapters stay fp32
    state_width = _STATE_BYTES[optimizer]
    state_width = train_width if state_width is None else state_width
    optimizer_bytes = 2 * trainable * state_width
    if optimizer != "adamw":
        scratch_bytes = 0.0        # SGD updates in place; 8-bit AdamW works block by block
    elif device == "cpu":
        scratch_bytes = 2 * largest * state_width
    else:
        scratch_bytes = trainable * state_width

    activation_bytes = tokens * width * _activation_values(
        shape, method, seq_len, lora_rank, lora_targets, lora_dropout, device, padded,
        gradient_checkpointing, width)
    # the loss works in fp32: log-softmax output, its gradient and the logits' gradient,
    # plus the low-precision logits themselves when the model computes in 16 bits
    logit_bytes = tokens * shape.vocab_size * (3 * 4 + (width if width != 4 else 0))

    # mixed precision: autocast casts each fp32 weight a matmul uses to 16 bits, and autograd
    # keeps the copy for the backward pass (the output layer included; 4-bit layers are
    # dequantized one at a time and keep nothing)
    autocast_bytes = 0.0
    output_layer = shape.vocab_size * shape.hidden_size
    if device == "cuda" and width == 2 and method == "qlora":
        autocast_bytes = output_layer * width   # the output layer, upcast to fp32 for k-bit training
    elif device == "cuda" and width == 2 and param_width == 4:
        autocast_bytes = (shape.linear_parameters() + output_layer) * width

    parts = dict(weights_mib=weight_bytes / MIB, gradients_mib=trainable * train_width / MIB,
                 optimizer_mib=optimizer_bytes / MIB, activations_mib=activation_bytes / MIB,
                 logits_mib=logit_bytes / MIB, step_scratch_mib=scratch_bytes / MIB,
                 autocast_mib=autocast_bytes / MIB,
                 accumulating=gradient_accumulation_steps > 1)
    estimate = MemoryEstimate(method=method, overhead_mib=0.0, trainable_parameters=trainable,
                              total_parameters=total, **parts)
    overhead = OVERHEAD_FRACTION[device] * estimate.total_mib
    return MemoryEstimate(method=method, overhead_mib=overhead, trainable_parameters=trainable,
                          total_parameters=total, **parts)


WEIGHT_FORMATS = ("fp32", "bf16", "fp16", "nf4", "int8")


@dataclass(frozen=True)
class InferenceEstimate:
    """Predicted peak memory of a forward pass without gradients, in MiB: an evaluation loss
    (`Trainer.evaluate`, logits of every position) or `generate` (a key/value cache, logits of
    the last position only)."""

    weights_mib: float            # the model as loaded (4-bit layers at 4.127 bits)
    kv_cache_mib: float           # keys and values of every layer for every token so far
    layer_temporaries_mib: float  # the largest layer's intermediate tensors (MLP, attention)
    logits_mib: float             # scores over the vocabulary, fp32 where upcast
    overhead_mib: float           # allocator slack, the same share as for training

    @property
    def total_mib(self) -> float:
        return (self.weights_mib + self.kv_cache_mib + self.layer_temporaries_mib
                + self.logits_mib + self.overhead_mib)

    def components(self) -> dict[str, float]:
        return {"weights": self.weights_mib, "key/value cache": self.kv_cache_mib,
                "layer temporaries": self.layer_temporaries_mib, "logits": self.logits_mib,
                "overhead": self.overhead_mib}

    def to_dict(self) -> dict:
        return {**asdict(self), "total_mib": self.total_mib}


def weights_mib(config, weights: str = "fp32") -> float:
    """Memory of a model's weights as loaded: "fp32", "bf16", "fp16", "int8" (LLM.int8 linear
    layers, the rest fp16) or "nf4" (4-bit NF4 linear layers with double quantization, the rest
    fp16)."""
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weights must be one of {WEIGHT_FORMATS}, got {weights!r}")
    shape = config if isinstance(config, ModelShape) else ModelShape.from_config(config)
    total = shape.parameter_count()
    if weights in ("nf4", "int8"):
        quantized = shape.linear_parameters()
        bits = nf4_bits_per_parameter() if weights == "nf4" else 8 + 32 / shape.hidden_size
        return (quantized * bits / 8 + (total - quantized) * 2) / MIB
    return total * dtype_bytes(weights) / MIB


def estimate_inference_memory(config, batch_size: int, seq_len: int, new_tokens: int = 0,
                              weights: str = "fp32", dtype=torch.float32, loss: bool = False,
                              device: str = "cuda") -> InferenceEstimate:
    """Predict the peak memory of inference with a Llama-family model (or GPT-2), in MiB.

    batch_size, seq_len: rows per call and their padded length (prompt length for generate).
    new_tokens: tokens `generate` adds to each row (0 for a plain forward pass).
    weights: how the weights are stored, see weights_mib.
    dtype: compute dtype of activations (the 4-bit compute dtype for "nf4").
    loss: True for an evaluation loss: logits of every position in the compute dtype, their
        fp32 upcast and its log-softmax (transformers' loss upcasts). False for generate:
        logits of the last position only, in fp32.
    """
    if batch_size <= 0 or seq_len <= 0 or new_tokens < 0:
        raise ValueError(f"batch_size and seq_len must be positive and new_tokens not negative, "
                         f"got {batch_size}, {seq_len}, {new_tokens}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    shape = config if isinstance(config, ModelShape) else ModelShape.from_config(config)
    width = dtype_bytes(dtype)
    tokens = batch_size * seq_len
    kv_bytes = batch_size * (seq_len + new_tokens) * shape.num_layers * 2 * shape.kv_dim * width
    # one layer at a time: the MLP's two or three intermediate tensors and its input/output,
    # and the attention weights should the kernel materialize them (the "math" fallback)
    mlp = (3 if shape.gated_mlp else 2) * shape.intermediate_size + 3 * shape.hidden_size
    attention = batch_size * shape.num_heads * seq_len * seq_len
    temporaries = (tokens * mlp + attention) * width
    if weights in ("nf4", "int8"):     # one linear layer is dequantized to 16 bits at a time
        temporaries += max(d_in * d_out for d_in, d_out in shape.linear_shapes().values()) * 2
    if loss:
        logit_bytes = tokens * shape.vocab_size * ((width if width != 4 else 0) + 4 + 4)
    else:
        logit_bytes = batch_size * shape.vocab_size * (width + 4 + 4)  # last position, fp32 copy
    parts = dict(weights_mib=weights_mib(shape, weights), kv_cache_mib=kv_bytes / MIB,
                 layer_temporaries_mib=temporaries / MIB, logits_mib=logit_bytes / MIB)
    overhead = OVERHEAD_FRACTION[device] * sum(parts.values())
    return InferenceEstimate(overhead_mib=overhead, **parts)


def measured_training_mib(peak_mib: float, start_mib: float, model_mib: float) -> float:
    """The measured counterpart of an estimate: the training peak minus what the process held
    besides the model when training began (libraries, data, other models), i.e.
    peak - (start - model). On a GPU with nothing else allocated it is simply the peak."""
    return peak_mib - (start_mib - model_mib)


def shipped_config(model_id: str):
    """The config of a large model whose size fields ship with the course, for estimates
    without a download (notebook 04 sizes the 7B generator of notebook 05 this way).

    Returns a transformers config built from course_utils/resources/model_shapes/<name>.json;
    only the fields that memory depends on are set.
    """
    import json
    from importlib.resources import files

    from transformers import AutoConfig

    folder = files("course_utils") / "resources" / "model_shapes"
    name = model_id.rsplit("/", 1)[-1]
    path = folder / f"{name}.json"
    if not path.is_file():
        known = sorted(p.name.removesuffix(".json") for p in folder.iterdir()
                       if p.name.endswith(".json"))
        raise ValueError(f"no shipped config for {model_id!r}; shipped: {known}. For another "
                         f"model use transformers.AutoConfig.from_pretrained({model_id!r}) "
                         "(downloads its config.json)")
    fields = {k: v for k, v in json.loads(path.read_text()).items()
              if not k.startswith("_") and k != "model_id"}
    return AutoConfig.for_model(fields.pop("model_type"), **fields)
