"""Turning prompts into answers: batched generation and removal of reasoning blocks.

Batching many prompts into one `generate` call is several times faster than one prompt at a
time, but prompts have different lengths. A decoder-only model continues from the LAST
position of each row, so the padding goes on the LEFT: every row then ends with its own last
prompt token and the new tokens line up in the same columns for the whole batch.

Reasoning models (DeepSeek-R1, Qwen3 in thinking mode) write their thoughts between `<think>`
and `</think>` before the answer. Only the answer is scored, so the thoughts are removed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def strip_reasoning(text: str) -> str:
    """The answer part of a model output, without its `<think>...</think>` block.

    - Everything up to and including the LAST `</think>` goes, also when the opening tag is
      missing: DeepSeek-R1's chat template puts `<think>` in the prompt, so outputs often
      hold only the closing tag.
    - A `<think>` that never closes means generation stopped mid-thought (max_new_tokens ran
      out): there is no answer yet, so everything from that tag on goes. An output that
      starts with the tag becomes "".
    - Text without tags comes back unchanged, minus surrounding whitespace.
    """
    closing = text.rfind(THINK_CLOSE)
    if closing != -1:
        text = text[closing + len(THINK_CLOSE):]
    opening = text.find(THINK_OPEN)
    if opening != -1:
        text = text[:opening]
    return text.strip()


def _check_arguments(prompts, max_new_tokens: int, batch_size: int, tokenizer) -> None:
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings; wrap a single prompt as [prompt]")
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if tokenizer.pad_token_id is None:
        raise ValueError(
            "the tokenizer has no pad token, so prompts cannot be batched; set "
            "tokenizer.pad_token = tokenizer.eos_token (course_utils.models.load_tokenizer does)"
        )


def generate_answers(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 32,
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "Generating",
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    remove_reasoning: bool = True,
    **generate_kwargs,
) -> list[str]:
    """Generate one answer per prompt, in the order of `prompts`.

    prompts: finished prompt strings (chat template already applied), tokenized as they are:
        no extra special tokens are added.
    do_sample: False is greedy decoding (the most likely token each step: repeatable, used
        for evaluation); True samples with `temperature` and `top_p`, seeded by `seed`.
    remove_reasoning: pass each answer through strip_reasoning.
    generate_kwargs: passed on to model.generate (e.g. repetition_penalty=1.2).

    Only the new tokens are decoded, so answers never repeat the prompt. Prompts are batched
    longest first, which keeps padding small; the model's train/eval mode and the tokenizer's
    padding side are restored afterwards.
    """
    _check_arguments(prompts, max_new_tokens, batch_size, tokenizer)
    prompts = list(prompts)
    if not prompts:
        return []
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])  # longest first
    options = dict(max_new_tokens=max_new_tokens, do_sample=do_sample,
                   pad_token_id=tokenizer.pad_token_id, **generate_kwargs)
    if do_sample:
        if temperature <= 0 or not 0 < top_p <= 1:
            raise ValueError(f"sampling needs temperature > 0 and 0 < top_p <= 1, "
                             f"got temperature={temperature}, top_p={top_p}")
        options.update(temperature=temperature, top_p=top_p)
        if seed is not None:
            torch.manual_seed(seed)  # seeds the CPU and every GPU generator

    answers: list[str | None] = [None] * len(prompts)
    was_training, padding_side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    try:
        with torch.inference_mode(), tqdm(total=len(prompts), desc=desc, unit="prompt",
                                          disable=not progress) as bar:
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                encoded = tokenizer([prompts[i] for i in batch], return_tensors="pt",
                                    padding=True, add_special_tokens=False).to(model.device)
                output = model.generate(**encoded, **options)  # (B, prompt + new tokens)
                new_tokens = output[:, encoded["input_ids"].shape[1]:]
                texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
                for i, text in zip(batch, texts, strict=True):
                    answers[i] = strip_reasoning(text) if remove_reasoning else text.strip()
                bar.update(len(batch))
    finally:
        model.train(was_training)
        tokenizer.padding_side = padding_side
    return answers


def sample_answers(model, tokenizer, prompts: Sequence[str], temperature: float = 0.8,
                   top_p: float = 0.95, seed: int = 42, **kwargs) -> list[str]:
    """Sampled (not greedy) answers: varied text, repeatable for a given seed and batch size.

    Higher temperature flattens the next-token distribution (more surprising words); top_p
    keeps only the most likely tokens whose probabilities add up to top_p. Other keyword
    arguments are those of generate_answers.
    """
    return generate_answers(model, tokenizer, prompts, do_sample=True, temperature=temperature,
                            top_p=top_p, seed=seed, **kwargs)
