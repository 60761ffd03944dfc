"""The forgetting probe: its files, its scoring rules, and measures that see a change."""

from __future__ import annotations

import json

import pytest
import torch

from course_utils import forgetting
from course_utils.forgetting import (
    is_format_bleed,
    load_probe,
    measure,
    report,
    snapshot,
    trivia_is_correct,
)


def test_probe_files_are_complete_and_distinct():
    for name, keys in (("prose.jsonl", {"id", "text"}), ("trivia.jsonl", {"id", "question", "answers"}),
                       ("open_prompts.jsonl", {"id", "prompt"})):
        rows = [json.loads(line) for line in
                (forgetting.PROBE_DIR / name).read_text().splitlines() if line.strip()]
        assert len(rows) >= 10, name
        assert all(set(row) == keys for row in rows), name
        assert len({row["id"] for row in rows}) == len(rows), f"{name}: duplicate ids"
    probe = load_probe()
    assert all(len(text.split()) >= 30 for text in probe.prose)
    assert all(answers and all(a.strip() for a in answers) for _, answers in probe.trivia)
    assert len(load_probe(size=3).trivia) == 3
    with pytest.raises(ValueError, match="at least 2"):
        load_probe(size=1)


@pytest.mark.parametrize("reply, answers, correct", [
    ("Paris", ["Paris"], True),
    ("The capital is Paris.\nMore text", ["Paris"], True),
    ("Parisian food", ["Paris"], False),           # whole words only
    ("I think it is 8 legs", ["eight", "8"], True),
    ("Lyon", ["Paris"], False),
    ("", ["Paris"], False),
])
def test_trivia_rule(reply, answers, correct):
    assert trivia_is_correct(reply, answers) is correct


@pytest.mark.parametrize("reply, bleed", [
    ("No Answer Present.", True),
    ("Blue waves.", True),
    ("The sea rolls in, grey and wide, and sings to the sleeping shore.", False),
])
def test_format_bleed_rule(reply, bleed):
    assert is_format_bleed(reply) is bleed


@pytest.fixture(scope="module")
def tiny_model():
    from course_utils.hardware import detect_hardware
    from course_utils.models import load_causal_lm

    return load_causal_lm("packaged:smollm2-135m-instruct", hardware=detect_hardware(prefer_cpu=True))


def test_unchanged_model_has_no_forgetting_and_a_changed_one_has(tiny_model):
    model, tokenizer = tiny_model
    probe = load_probe(size=4)
    base = snapshot(model, tokenizer, probe)
    same = measure(model, tokenizer, probe, base=base)
    assert max(same.kl_to_base) < 1e-6
    assert same.prose_nll == pytest.approx(base.prose_nll, abs=1e-5)
    assert same.trivia_answers == base.trivia_answers           # greedy: the same replies
    layer = model.model.layers[0].mlp.down_proj.weight
    saved = layer.detach().clone()
    try:
        with torch.no_grad():
            layer.add_(torch.randn_like(layer, generator=torch.Generator().manual_seed(0)) * 0.05)
        changed = measure(model, tokenizer, probe, base=base)
    finally:
        with torch.no_grad():
            layer.copy_(saved)
    assert min(changed.kl_to_base) > 1e-4
    numbers = report(base, changed)
    assert numbers["kl_to_base"]["estimate"] > 0
    assert numbers["perplexity"]["tuned"] != pytest.approx(numbers["perplexity"]["base"])
    for name in ("prose_nll", "trivia_accuracy", "format_bleed"):
        difference = numbers[name]["difference"]
        assert difference["low"] <= difference["estimate"] <= difference["high"]
    json.dumps(numbers)                                          # plain JSON for a results file
    with pytest.raises(ValueError, match="keep_distributions=True"):
        measure(model, tokenizer, probe, base=same)
