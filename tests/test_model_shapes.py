"""The model shapes that ship with the course (course_utils/resources/model_shapes/*.json).

Each file holds the size fields of one model's config.json, so the estimator and the planner can
size models that are never downloaded. A wrong field gives a wrong plan silently, so every file is
checked against the parameter count its publisher states: the count computed from the shape
(ModelShape.parameter_count, itself checked against real models in test_estimator.py) must be
within 1 % of it.
"""

from __future__ import annotations

import json
from importlib.resources import files

import pytest

from course_utils.estimator import SUPPORTED_MODEL_TYPES, ModelShape, shipped_config

SHAPES = files("course_utils") / "resources" / "model_shapes"
COMMON = ("_comment", "model_id", "model_type", "vocab_size")
REQUIRED = {  # the size fields each family's config.json names
    "decoder": ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "tie_word_embeddings"),
    "gpt2": ("n_embd", "n_layer", "n_head", "n_positions"),
}

# Published parameter counts: (total, non-embedding or None, where the numbers are published).
PUBLISHED = {
    "Qwen/Qwen3-0.6B": (0.6e9, 0.44e9, "Qwen3-0.6B model card: 'Number of Parameters: 0.6B "
                                       "(0.44B non-embedding)'"),
    "Qwen/Qwen3-8B": (8.2e9, 6.95e9, "Qwen3-8B model card: 'Number of Parameters: 8.2B "
                                     "(6.95B non-embedding)'"),
    "meta-llama/Llama-3.1-8B": (8.03e9, None, "Hugging Face model page, safetensors: 8.03B "
                                              "params"),
    "mistralai/Mistral-7B-v0.3": (7.25e9, None, "Hugging Face model page, safetensors: 7.25B "
                                                "params"),
    "mistralai/Mistral-7B-Instruct-v0.3": (7.25e9, None, "Hugging Face model page, "
                                                         "safetensors: 7.25B params"),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": (7.62e9, None, "Hugging Face model page, "
                                                              "safetensors: 7.62B params"),
    "distilgpt2": (82e6, None, "distilgpt2 model card: 6 layers, 768 dimension and 12 heads, "
                               "82M parameters"),
}


def shipped_files() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in SHAPES.iterdir()
            if path.name.endswith(".json")}


def test_every_shipped_model_has_a_published_count():
    ids = {fields["model_id"] for fields in shipped_files().values()}
    assert ids == set(PUBLISHED), "add the published parameter count of each new shape here"


@pytest.mark.parametrize("name", sorted(shipped_files()))
def test_shape_file_has_the_required_fields(name):
    fields = shipped_files()[name]
    family = "gpt2" if fields.get("model_type") == "gpt2" else "decoder"
    missing = [key for key in COMMON + REQUIRED[family] if key not in fields]
    assert not missing, f"{name} lacks {missing}"
    assert name == fields["model_id"].rsplit("/", 1)[-1] + ".json"  # how shipped_config finds it
    assert fields["model_type"] in SUPPORTED_MODEL_TYPES
    assert "config.json" in fields["_comment"]                   # says where the values came from
    if fields["model_type"] == "qwen3":                          # Qwen3 sets head_dim explicitly
        assert fields["head_dim"] == 128


@pytest.mark.parametrize("model_id", sorted(PUBLISHED))
def test_parameter_count_matches_the_published_one(model_id):
    config = shipped_config(model_id)
    fields = {k: v for k, v in shipped_files()[model_id.rsplit("/", 1)[-1] + ".json"].items()
              if not k.startswith("_") and k != "model_id"}
    for key, value in fields.items():                            # the config carries every field
        assert getattr(config, key) == value, key
    shape = ModelShape.from_config(config)
    total, non_embedding, source = PUBLISHED[model_id]
    count = shape.parameter_count()
    assert count == pytest.approx(total, rel=0.01), f"{count:,} vs {total:,.0f} ({source})"
    if non_embedding is not None:  # Llama-family decoders only: no position embeddings
        embeddings = shape.vocab_size * shape.hidden_size * (1 if shape.tie_word_embeddings else 2)
        assert count - embeddings == pytest.approx(non_embedding, rel=0.01), source
