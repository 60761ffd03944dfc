"""What did fine-tuning cost the model's general knowledge? A probe measured before and after.

Fine-tuning on one task can wear away what the model knew before ("catastrophic forgetting").
Biderman et al. (2024, "LoRA Learns Less and Forgets Less") measure both halves: how much a
method learns of the new task and how much it forgets of the old ones. We do the same on a
small probe shipped with the project (course_utils/resources/general_probe/, general text that
is not MS MARCO), with four measures:

- perplexity on general prose: does ordinary text become more surprising to the model?
- KL(base || tuned): how far the next-token distributions on that prose moved, averaged over
  tokens (0 = unchanged). It sees changes that perplexity can hide;
- trivia accuracy: short general questions, asked with a plain chat prompt, no passage;
- format bleed: the share of open requests ("write a short poem...") answered in MS MARCO's
  terse style (fewer than BLEED_WORDS words) or with "No Answer Present.".

Take a `snapshot` of the model before training (it keeps the base model's next-token
distributions on the prose, in fp32 on the CPU) and `measure` the trained model against it;
`report` turns both into numbers with paired bootstrap intervals (course_utils/uncertainty.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib.resources import files

import torch

from course_utils.data import NO_ANSWER, chat_prompt
from course_utils.evaluation import generate_answers, normalize_answer
from course_utils.uncertainty import mean_interval, paired_difference

PROBE_DIR = files("course_utils") / "resources" / "general_probe"
PROSE_TOKENS = 64            # tokens scored per paragraph (keeps the stored distributions small)
BLEED_WORDS = 5              # an open request answered in fewer words shows MS MARCO's style
TRIVIA_INSTRUCTION = "Answer the question with one or two words."
OPEN_INSTRUCTION = "You are a helpful assistant."


@dataclass(frozen=True)
class Probe:
    prose: list[str]                      # general paragraphs (perplexity, KL)
    trivia: list[tuple[str, list[str]]]   # (question, accepted answers)
    open_prompts: list[str]               # requests that call for a few sentences


def _read(name: str) -> list[dict]:
    path = PROBE_DIR / name
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {number}: not valid JSON ({error.msg}); "
                                 "reinstall course_utils") from error
    return rows


def load_probe(size: int | None = None) -> Probe:
    """The shipped probe; size keeps the first `size` items of each part (None: all)."""
    prose = [row["text"] for row in _read("prose.jsonl")]
    trivia = [(row["question"], list(row["answers"])) for row in _read("trivia.jsonl")]
    prompts = [row["prompt"] for row in _read("open_prompts.jsonl")]
    if size is not None:
        if size < 2:
            raise ValueError(f"a probe needs at least 2 items per part, got size={size}")
        prose, trivia, prompts = prose[:size], trivia[:size], prompts[:size]
    return Probe(prose=prose, trivia=trivia, open_prompts=prompts)


@dataclass
class Snapshot:
    """What one model did on the probe. Lists hold one value per probe item, in probe order."""

    prose_nll: list[float]                # mean negative log-likelihood per paragraph (nats)
    trivia_correct: list[float]           # 1.0 where an accepted answer is in the reply
    bleed: list[float]                    # 1.0 where an open request got a terse reply
    trivia_answers: list[str]
    open_answers: list[str]
    kl_to_base: list[float] | None = None  # mean KL(base || this model) per paragraph
    # the base model's next-token log-probabilities per paragraph, (T-1, V) fp32 on the CPU;
    # kept only in a snapshot taken to compare against, never saved to a results file
    log_probs: list[torch.Tensor] = field(default_factory=list, repr=False)


def trivia_is_correct(reply: str, answers: list[str]) -> bool:
    """An accepted answer appears, as whole words, in the reply's first line."""
    first_line = normalize_answer((reply.strip().splitlines() or [""])[0])
    words = f" {first_line} "
    return any(f" {normalize_answer(answer)} " in words for answer in answers)


def is_format_bleed(reply: str) -> bool:
    """A terse reply or "No Answer Present." to an open request: MS MARCO's style has leaked."""
    text = normalize_answer(reply)
    return normalize_answer(NO_ANSWER) in text or len(text.split()) < BLEED_WORDS


def _prose_log_probs(model, tokenizer, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probabilities (T-1, V) fp32 on the CPU, next-token ids (T-1,)) for one paragraph."""
    ids = tokenizer(text, return_tensors="pt", truncation=True,
                    max_length=PROSE_TOKENS)["input_ids"].to(model.device)
    logits = model(input_ids=ids).logits[0, :-1].float()      # position t predicts token t+1
    return torch.log_softmax(logits, dim=-1).cpu(), ids[0, 1:].cpu()


def measure(model, tokenizer, probe: Probe, base: Snapshot | None = None,
            keep_distributions: bool = False, batch_size: int = 8,
            progress: bool = False) -> Snapshot:
    """Run the probe on a model. With `base` (a snapshot taken with keep_distributions=True
    before training), also the KL divergence from the base model's next-token distributions.
    keep_distributions=True stores this model's distributions for such later comparisons."""
    if base is not None and len(base.log_probs) != len(probe.prose):
        raise ValueError("the base snapshot holds no next-token distributions for this probe: "
                         "take it with measure(..., keep_distributions=True) before training")
    was_training = model.training
    model.eval()
    nll, kl, kept = [], [], []
    try:
        with torch.inference_mode():
            for index, text in enumerate(probe.prose):
                log_probs, targets = _prose_log_probs(model, tokenizer, text)
                nll.append(float(-log_probs.gather(1, targets[:, None]).mean()))
                if base is not None:
                    reference = base.log_probs[index]                # (T-1, V), the base's
                    kl_per_token = (reference.exp() * (reference - log_probs)).sum(-1)
                    kl.append(float(kl_per_token.mean()))
                if keep_distributions:
                    kept.append(log_probs)
    finally:
        model.train(was_training)
    trivia_prompts = [chat_prompt(tokenizer, TRIVIA_INSTRUCTION, f"Question: {q}")
                      for q, _ in probe.trivia]
    open_prompts = [chat_prompt(tokenizer, OPEN_INSTRUCTION, p) for p in probe.open_prompts]
    trivia_answers = generate_answers(model, tokenizer, trivia_prompts, max_new_tokens=16,
                                      batch_size=batch_size, progress=progress,
                                      desc="probe: trivia")
    open_answers = generate_answers(model, tokenizer, open_prompts, max_new_tokens=40,
                                    batch_size=batch_size, progress=progress,
                                    desc="probe: open requests")
    return Snapshot(
        prose_nll=nll,
        trivia_correct=[float(trivia_is_correct(a, answers))
                        for a, (_, answers) in zip(trivia_answers, probe.trivia, strict=True)],
        bleed=[float(is_format_bleed(a)) for a in open_answers],
        trivia_answers=trivia_answers, open_answers=open_answers,
        kl_to_base=kl if base is not None else None, log_probs=kept)


def snapshot(model, tokenizer, probe: Probe, **options) -> Snapshot:
    """The probe on the model before training, keeping its next-token distributions."""
    return measure(model, tokenizer, probe, keep_distributions=True, **options)


def report(base: Snapshot, tuned: Snapshot) -> dict:
    """Before, after and the paired difference with its 95 % interval, for every measure.

    Plain JSON types, for a results file's `forgetting` block:
    {"perplexity": {"base", "tuned"}, "prose_nll": {"base", "tuned", "difference"},
     "kl_to_base": {...interval...}, "trivia_accuracy": {...}, "format_bleed": {...}, "n": {...}}
    """
    import math

    if tuned.kl_to_base is None:
        raise ValueError("the tuned snapshot has no KL to the base: measure it with base=")

    def before_after(before, after):
        return {"base": mean_interval(before).to_dict(), "tuned": mean_interval(after).to_dict(),
                "difference": paired_difference(before, after).to_dict()}

    return {
        "perplexity": {"base": math.exp(sum(base.prose_nll) / len(base.prose_nll)),
                       "tuned": math.exp(sum(tuned.prose_nll) / len(tuned.prose_nll))},
        "prose_nll": before_after(base.prose_nll, tuned.prose_nll),
        "kl_to_base": mean_interval(tuned.kl_to_base).to_dict(),
        "trivia_accuracy": before_after(base.trivia_correct, tuned.trivia_correct),
        "format_bleed": before_after(base.bleed, tuned.bleed),
        "n": {"prose": len(base.prose_nll), "trivia": len(base.trivia_correct),
              "open_prompts": len(base.bleed)},
    }
