"""Profiles are validated data; the choice order is parameter > COURSE_PROFILE > hardware."""

import pytest
import torch

from course_utils.hardware import Hardware, detect_hardware
from course_utils.profiles import FULL, TINY, get_profile, resolve_profile_name


def test_full_profile_is_the_original_course():
    assert FULL.lm_model == "distilgpt2"
    assert FULL.chat_model == "Qwen/Qwen3-0.6B"
    assert FULL.rag_model == "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
    assert FULL.rag_quantization == "4bit"
    assert (FULL.dataset, FULL.dataset_config) == ("microsoft/ms_marco", "v1.1")
    assert FULL.embedding_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert FULL.bertscore_model == "roberta-large"
    assert FULL.test_size >= 100
    assert not FULL.offline


def test_tiny_profile_is_offline_and_packaged():
    assert TINY.offline
    assert TINY.test_size >= 40
    for model in (TINY.lm_model, TINY.chat_model, TINY.rag_model):
        assert model == "packaged:smollm2-135m-instruct"
    assert TINY.embedding_model == TINY.bertscore_model == "packaged:all-minilm-l6-v2"


def test_explicit_name_beats_environment(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "full")
    assert get_profile("tiny").name == "tiny"
    assert get_profile("auto").name == "full"


def test_auto_without_environment_follows_hardware(monkeypatch):
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    expected = "full" if torch.cuda.is_available() else "tiny"
    assert resolve_profile_name("auto") == expected
    assert resolve_profile_name(None) == expected


@pytest.mark.parametrize("name", ["huge", "Tiny-ish", ""])
def test_unknown_profile_lists_the_valid_ones(name, monkeypatch):
    if not name:
        monkeypatch.setenv("COURSE_PROFILE", "medium")
    with pytest.raises(ValueError) as error:
        get_profile(name or "auto")
    message = str(error.value)
    assert "full" in message and "tiny" in message and "COURSE_PROFILE" in message


def test_profiles_validate_on_creation():
    with pytest.raises(ValueError, match="test_size"):
        TINY.with_overrides(test_size=10)
    with pytest.raises(ValueError, match="rag_quantization"):
        TINY.with_overrides(rag_quantization="3bit")
    with pytest.raises(ValueError, match="positive"):
        TINY.with_overrides(max_length=0)


def test_hardware_precision_flags():
    cpu = detect_hardware(prefer_cpu=True)
    assert cpu.device == "cpu" and cpu.dtype == torch.float32
    assert cpu.trainer_precision == {"bf16": False, "fp16": False}
    t4 = Hardware("cuda", torch.float16, "Tesla T4", 2, supports_bf16=False)
    assert t4.trainer_precision == {"bf16": False, "fp16": True}
    h100 = Hardware("cuda", torch.bfloat16, "H100", 1, supports_bf16=True)
    assert h100.trainer_precision == {"bf16": True, "fp16": False}
