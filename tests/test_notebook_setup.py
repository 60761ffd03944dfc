"""The first cell every notebook runs: profile, hardware, seed, versions."""

import pytest
import torch

from course_utils.notebook import setup_notebook


def test_setup_prints_versions_profile_and_hardware(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_PROFILE", "tiny")
    ctx = setup_notebook("03_lora", "auto")
    out = capsys.readouterr().out
    assert ctx.profile.name == "tiny" and ctx.name == "03_lora"
    assert "torch " + torch.__version__ in out and "transformers" in out
    assert "Profile: tiny" in out and "Hardware:" in out
    assert ctx.elapsed() >= 0


def test_setup_seeds_everything(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "tiny")
    setup_notebook("x", verbose=False)
    first = torch.rand(3)
    setup_notebook("x", verbose=False)
    assert torch.equal(first, torch.rand(3))


def test_setup_rejects_an_unknown_profile():
    with pytest.raises(ValueError, match="Valid profiles"):
        setup_notebook("x", "enormous", verbose=False)
