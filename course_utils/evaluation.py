"""How good are the answers? Generation, then exact match, token F1, BERTScore and perplexity.

Exact match and token F1 follow the SQuAD evaluation script: both strings are normalized
(lowercase, no punctuation, no articles a/an/the, single spaces) before comparing. Exact match
asks "is it the same answer?"; token F1 gives partial credit for shared words.

BERTScore embeds both answers with an encoder and matches each token to its most similar token
on the other side (cosine similarity): it rewards paraphrases that share no words. Raw scores sit
in a narrow band near the top (unrelated English sentences already score 0.5-0.85), so bert-score
ships per-model "baselines" that rescale them: 0 means "as similar as random sentences".

Perplexity is exp(mean negative log-likelihood per token): "how many tokens the model hesitates
between", on average. Lower is better; 1 is a model that is always certain and right.
"""

from __future__ import annotations

import functools
import math
import re
import string
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from course_utils.answer_cache import cached_answers
from course_utils.config import PACKAGED_PREFIX, Profile

Reference = str | Sequence[str]  # one reference answer, or several acceptable ones

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


# ---------------------------------------------------------------- generation
# Turning prompts into answers: batched generation, removal of reasoning blocks, and a
# thinking budget for reasoning models.
#
# Batching many prompts into one `generate` call is several times faster than one prompt at a
# time, but prompts have different lengths. A decoder-only model continues from the LAST
# position of each row, so the padding goes on the LEFT: every row then ends with its own last
# prompt token and the new tokens line up in the same columns for the whole batch.
#
# Reasoning models (DeepSeek-R1, Qwen3 in thinking mode) write their thoughts between `<think>`
# and `</think>` before the answer. Only the answer is scored, so the thoughts are removed.

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


class PromptTooLongError(ValueError):
    """A prompt and its new tokens do not fit in the model's context."""


# transformers' tokenizers say "no limit" with a huge model_max_length (int(1e30))
_NO_LIMIT = 10_000_000


def context_limit(model, tokenizer) -> int | None:
    """The most positions (prompt + new tokens) the model takes: the smaller of
    config.max_position_embeddings and the tokenizer's model_max_length; None if neither
    says."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config   # multimodal configs nest it
    limits = [value for value in (getattr(config, "max_position_embeddings", None),
                                  getattr(tokenizer, "model_max_length", None))
              if isinstance(value, int) and not isinstance(value, bool) and 0 < value < _NO_LIMIT]
    return min(limits) if limits else None


def prompts_too_long(model, tokenizer, prompts: Sequence[str], max_new_tokens: int,
                     lengths: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """(index, prompt tokens) of each prompt that leaves no room for max_new_tokens in the
    model's context (context_limit)."""
    limit = context_limit(model, tokenizer)
    if limit is None:
        return []
    if lengths is None:
        lengths = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)
                   ["input_ids"]]
    return [(i, n) for i, n in enumerate(lengths) if n + max_new_tokens > limit]


def too_long_message(model, tokenizer, prompts: Sequence[str], row: int, tokens: int,
                     max_new_tokens: int, desc: str = "") -> str:
    """What is wrong with one prompt that does not fit, and which setting to change."""
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or "the model"
    return (f"{desc + ': ' if desc else ''}prompt {row} (of {len(prompts)}) is {tokens} tokens; "
            f"with max_new_tokens={max_new_tokens} it needs {tokens + max_new_tokens} positions, "
            f"but {name} takes at most {context_limit(model, tokenizer)} "
            f"(config.max_position_embeddings / tokenizer.model_max_length). Shorten it: fewer "
            f"or shorter passages (the recipe's k, TOP_K in notebook 05), fewer few-shot "
            f"examples, or a smaller max_new_tokens. It starts {prompts[row][:60]!r}.")


def _stop_token_ids(model, tokenizer, options: dict) -> set[int]:
    """Token ids after which a row has stopped: the end token(s) and the pad token."""
    ids = options.get("eos_token_id")
    if ids is None:
        ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    return {*ids, tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}


def _generate_raw(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int,
                  progress: bool, desc: str, do_sample: bool, temperature: float, top_p: float,
                  seed: int | None, **generate_kwargs) -> tuple[list[str], list[bool]]:
    """(texts, cut) in the order of `prompts`: the decoded new tokens of each prompt (special
    tokens dropped, whitespace kept) and whether it was cut off, i.e. used all
    `max_new_tokens` without writing an end token."""
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    too_long = prompts_too_long(model, tokenizer, prompts, max_new_tokens, lengths)
    if too_long:  # checked before generating: past the context the model only writes noise
        row, tokens = too_long[0]
        more = f" ({len(too_long) - 1} more prompts are too long.)" if len(too_long) > 1 else ""
        raise PromptTooLongError(too_long_message(model, tokenizer, prompts, row, tokens,
                                                  max_new_tokens, desc) + more)
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
    stops = _stop_token_ids(model, tokenizer, options)

    texts: list[str] = [""] * len(prompts)
    cut: list[bool] = [False] * len(prompts)
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
                new_tokens = output[:, encoded["input_ids"].shape[1]:]  # (B, new tokens)
                decoded = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
                full = new_tokens.shape[1] >= max_new_tokens  # the batch ran to the budget
                for row, (i, text) in enumerate(zip(batch, decoded, strict=True)):
                    texts[i] = text
                    cut[i] = full and int(new_tokens[row, -1]) not in stops
                bar.update(len(batch))
    finally:
        model.train(was_training)
        tokenizer.padding_side = padding_side
    return texts, cut


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
    cache: bool = True,
    **generate_kwargs,
) -> list[str]:
    """Generate one answer per prompt, in the order of `prompts`.

    prompts: finished prompt strings (chat template already applied), tokenized as they are:
        no extra special tokens are added.
    do_sample: False is greedy decoding (the most likely token each step: repeatable, used
        for evaluation); True samples with `temperature` and `top_p`, seeded by `seed`.
    remove_reasoning: pass each answer through strip_reasoning.
    generate_kwargs: passed on to model.generate (e.g. repetition_penalty=1.2).
    cache: greedy answers are kept on disk, keyed by the exact weights, prompts and options, and
        read back when the same model is asked again (course_utils/answer_cache.py);
        False always generates.

    Only the new tokens are decoded, so answers never repeat the prompt. Prompts are batched
    longest first, which keeps padding small; the model's train/eval mode and the tokenizer's
    padding side are restored afterwards. A prompt that leaves no room for max_new_tokens in
    the model's context raises PromptTooLongError before anything is generated.
    """
    _check_arguments(prompts, max_new_tokens, batch_size, tokenizer)
    prompts = list(prompts)
    if not prompts:
        return []
    options = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, do_sample=do_sample,
                   temperature=temperature, top_p=top_p, seed=seed, **generate_kwargs)

    def generate() -> tuple[list[str], list[bool]]:
        return _generate_raw(model, tokenizer, prompts, max_new_tokens, batch_size, progress,
                             desc, do_sample, temperature, top_p, seed, **generate_kwargs)

    if not cache:
        texts, _ = generate()
    else:  # greedy answers this exact model already gave are read back (course_utils/answer_cache.py)
        texts, _, from_cache = cached_answers(model, tokenizer, prompts, options, generate)
        if from_cache and progress:
            with tqdm(total=len(prompts), desc=f"{desc} (cached answers)", unit="prompt") as bar:
                bar.update(len(prompts))
    return [strip_reasoning(text) if remove_reasoning else text.strip() for text in texts]


# A reasoning model may think for longer than we can wait: every batch runs until its longest
# member stops, and an output cut off before `</think>` holds no answer at all. A *thinking
# budget* bounds the thoughts and still gets an answer from every row, in two batched passes:
#   1. generate up to `thinking_budget` new tokens per prompt (thoughts, then the answer);
#   2. a row still thinking when the budget ran out is *forced*: its prompt, its thoughts so
#      far and "\n</think>\n\n" (plus an optional lead such as "Final answer:") go back to the
#      model, which now writes the answer in at most `answer_budget` tokens. A row that closed
#      its thoughts but was cut off inside its answer goes back unchanged, to finish it.
# The forced rows re-read their thoughts (a second prefill), so they are batched by
# `answer_batch_size`, which may be smaller. A model that never opens `<think>` is never
# forced: it gets one pass, exactly like generate_answers.
# generate_with_thinking_budget returns (outputs, forced): each raw output with its reasoning
# (what parse_answer in course_utils/rag.py reads), and whether its thoughts were cut off and
# closed for it. Decoding arguments (do_sample, temperature, top_p, seed, ...) are those of
# generate_answers and apply to both passes.

FORCE_CLOSE = "\n" + THINK_CLOSE + "\n\n"


def still_thinking(prompt: str, output: str) -> bool:
    """True when a `<think>` block is open at the end of prompt + output (no answer yet)."""
    closing = output.rfind(THINK_CLOSE)
    if closing == -1:
        return THINK_OPEN in output or prompt.rstrip().endswith(THINK_OPEN)
    return output.rfind(THINK_OPEN) > closing


def _sampling_options(sampling: dict) -> dict:
    """generate_answers' decoding arguments with their defaults, plus any generate keyword."""
    return {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "seed": None, **sampling}


def generate_with_thinking_budget(
    model,
    tokenizer,
    prompts: Sequence[str],
    thinking_budget: int,
    answer_budget: int,
    batch_size: int = 8,
    answer_batch_size: int | None = None,
    answer_lead: str = "",
    progress: bool = True,
    desc: str = "Generating",
    **sampling,
) -> tuple[list[str], list[bool]]:
    """What does a reasoning model answer when it may think only thinking_budget tokens?"""
    for name, value in (("thinking_budget", thinking_budget), ("answer_budget", answer_budget),
                        ("answer_batch_size", answer_batch_size or batch_size)):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    _check_arguments(prompts, thinking_budget, batch_size, tokenizer)
    prompts = list(prompts)
    if not prompts:
        return [], []
    texts, cut = _generate_raw(model, tokenizer, prompts, thinking_budget, batch_size,
                               progress, desc, **_sampling_options(sampling))
    forced = [still_thinking(p, t) for p, t in zip(prompts, texts, strict=True)]
    # forced rows get their thoughts closed; rows cut inside their answer simply continue
    again = [i for i, (f, c, t) in enumerate(zip(forced, cut, texts, strict=True))
             if f or (c and THINK_CLOSE in t)]
    for i in again:
        if forced[i]:
            texts[i] = texts[i].rstrip() + FORCE_CLOSE + answer_lead
    if again:
        endings, _ = _generate_raw(model, tokenizer, [prompts[i] + texts[i] for i in again],
                                   answer_budget, answer_batch_size or batch_size, progress,
                                   f"{desc} (answers after the thinking budget)",
                                   **_sampling_options(sampling))
        for i, ending in zip(again, endings, strict=True):
            texts[i] += ending
    return [text.strip() for text in texts], forced


def sample_answers(model, tokenizer, prompts: Sequence[str], temperature: float = 0.8,
                   top_p: float = 0.95, seed: int = 42, **kwargs) -> list[str]:
    """Sampled (not greedy) answers: varied text, repeatable for a given seed and batch size.

    Higher temperature flattens the next-token distribution (more surprising words); top_p
    keeps only the most likely tokens whose probabilities add up to top_p. Other keyword
    arguments are those of generate_answers.
    """
    return generate_answers(model, tokenizer, prompts, do_sample=True, temperature=temperature,
                            top_p=top_p, seed=seed, **kwargs)


# ---------------------------------------------------------------- exact match and token F1


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lowercase, drop punctuation and articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _as_list(reference: Reference) -> list[str]:
    references = [reference] if isinstance(reference, str) else list(reference)
    if not references:
        raise ValueError("a reference must be a string or a non-empty list of strings")
    return references


def _token_f1_single(prediction: str, reference: str) -> float:
    predicted = normalize_answer(prediction).split()
    expected = normalize_answer(reference).split()
    if not predicted or not expected:
        # both empty counts as a match (SQuAD v2 convention); one empty side scores 0
        return float(predicted == expected)
    shared = sum((Counter(predicted) & Counter(expected)).values())
    if shared == 0:
        return 0.0
    precision = shared / len(predicted)  # share of predicted words that are right
    recall = shared / len(expected)      # share of expected words that were found
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, reference: Reference) -> float:
    """1.0 when the normalized prediction equals a normalized reference, else 0.0."""
    normalized = normalize_answer(prediction)
    return max(float(normalized == normalize_answer(r)) for r in _as_list(reference))


def token_f1(prediction: str, reference: Reference) -> float:
    """Harmonic mean of word precision and recall, best over the references (0 to 1)."""
    return max(_token_f1_single(prediction, r) for r in _as_list(reference))


# ---------------------------------------------------------------- BERTScore


def bertscore_baseline_file(model_id: str) -> Path | None:
    """The rescaling baseline bert-score ships for a hub model id, or None.

    Baselines are TSV files (one row per layer: mean P, R, F of unrelated sentence pairs),
    found at `bert_score/rescale_baseline/en/<model id>.tsv`. Packaged models and local
    folders have none: their scores stay raw.
    """
    if model_id.startswith(PACKAGED_PREFIX) or Path(model_id).exists():
        return None
    import bert_score

    path = Path(bert_score.__file__).parent / "rescale_baseline" / "en" / f"{model_id}.tsv"
    return path if path.is_file() else None


@functools.lru_cache(maxsize=4)
def _scorer(model_id: str, num_layers: int | None):
    """One BERTScorer per (model, layer), kept so repeated calls do not reload the encoder."""
    from bert_score import BERTScorer
    from bert_score.utils import model2layers

    from course_utils.models import ModelUnavailableError, resolve_model_path

    path = resolve_model_path(model_id)  # a packaged model becomes its local folder
    if num_layers is None and path not in model2layers:
        raise ValueError(
            f"BERTScore needs num_layers for {model_id!r}: bert-score only knows default layers "
            f"for hub models such as 'roberta-large'. The tiny profile uses num_layers=4."
        )
    rescale = bertscore_baseline_file(model_id) is not None
    try:
        # a folder path loads with AutoTokenizer/AutoModel.from_pretrained: no network
        return BERTScorer(model_type=path, num_layers=num_layers, lang="en",
                          rescale_with_baseline=rescale)
    except OSError as error:
        raise ModelUnavailableError(
            f"Could not load the BERTScore model {model_id!r} ({error}). Offline, use the tiny "
            f"profile (COURSE_PROFILE=tiny), which scores with the packaged MiniLM."
        ) from error


def release_bertscore() -> None:
    """Drop the cached BERTScore encoders and free their memory (roberta-large in `full`:
    about 1.4 GB, on the GPU when there is one). The next `bertscore` call loads them again;
    notebooks call this before training, so the encoder does not sit on a T4 meanwhile."""
    from course_utils.models import free_memory

    _scorer.cache_clear()
    free_memory("cuda" if torch.cuda.is_available() else "cpu")


def _score_pairs(scorer, predictions: list[str], groups: list[list[str]]) -> torch.Tensor:
    """(N, 3) precision, recall, F1 per pair; a pair with an empty side scores raw 0.

    bert-score itself gives empty sentences a raw 0 but crashes on them with transformers 5
    (its tokenizer call for "" no longer exists), so empty pairs are scored here.
    """
    scores = torch.zeros(len(predictions), 3)
    if scorer.rescale_with_baseline:
        baseline = scorer.baseline_vals  # (3,) P, R, F of unrelated pairs at this layer
        scores[:] = (scores - baseline) / (1 - baseline)
    groups = [[r for r in group if r.strip()] for group in groups]
    keep = [i for i, (p, g) in enumerate(zip(predictions, groups, strict=True))
            if p.strip() and g]
    if keep:
        cands = [predictions[i] for i in keep]
        refs = [groups[i] for i in keep]
        # flat strings, or one list per prediction (bert-score keeps the best reference)
        if all(len(g) == 1 for g in refs):
            refs = [g[0] for g in refs]
        precision, recall, f1 = scorer.score(cands, refs)
        scores[keep] = torch.stack([precision, recall, f1], dim=1).float()
    return scores


def bertscore(predictions: Sequence[str], references: Sequence[Reference], model_id: str,
              num_layers: int | None = None) -> dict:
    """Corpus-mean BERTScore precision, recall and F1 of predictions against references.

    model_id: a hub id ("roberta-large"), a local folder, or "packaged:all-minilm-l6-v2".
    num_layers: which layer's embeddings to compare; None uses bert-score's tuned default
        (hub models only). Returns dict(precision, recall, f1, rescaled, model, num_layers)
        and per_example_f1, the F1 of every pair.
    """
    _check_pairs(predictions, references)
    scorer = _scorer(model_id, num_layers)
    scores = _score_pairs(scorer, list(predictions), [_as_list(r) for r in references])
    precision, recall, f1 = scores.unbind(dim=1)
    return {
        "precision": precision.mean().item(),
        "recall": recall.mean().item(),
        "f1": f1.mean().item(),
        "rescaled": scorer.rescale_with_baseline,
        "model": model_id,
        "num_layers": scorer.num_layers,          # the layer whose embeddings were compared
        "per_example_f1": f1.tolist(),
    }


# ---------------------------------------------------------------- perplexity


def perplexity_from_loss(mean_loss: float) -> float:
    """exp(mean NLL per token); inf when the loss is too large to exponentiate."""
    try:
        return math.exp(mean_loss)
    except OverflowError:
        return math.inf


def mean_token_nll(model, dataset, collator, batch_size: int = 8) -> float:
    """Mean negative log-likelihood over every label token that is not -100.

    Each batch's `labels` are shifted by one like in the model's own loss: position t predicts
    token t+1. Tokens are weighted equally (a long text counts more than a short one), unlike a
    plain mean of per-batch losses. The model runs in eval mode (no dropout) and goes back to
    its previous mode afterwards.
    """
    from torch.nn.functional import cross_entropy
    from torch.utils.data import DataLoader

    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    try:
        with torch.inference_mode():
            for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collator):
                labels = batch["labels"].to(model.device)
                inputs = {k: v.to(model.device) for k, v in batch.items()
                          if k != "labels" and isinstance(v, torch.Tensor)}
                logits = model(**inputs).logits  # (B, T, V)
                targets = labels[:, 1:]          # (B, T-1): token t+1 is predicted at t
                # one row at a time keeps the fp32 copy of the logits small
                for row_logits, row_targets in zip(logits[:, :-1], targets, strict=True):
                    total_nll += cross_entropy(row_logits.float(), row_targets,
                                               ignore_index=-100, reduction="sum").item()
                total_tokens += int((targets != -100).sum())
    finally:
        model.train(was_training)
    if total_tokens == 0:
        raise ValueError("no label tokens to score: every label is -100 (or the data is empty)")
    return total_nll / total_tokens


# ---------------------------------------------------------------- the one call notebooks make


def _check_pairs(predictions, references) -> None:
    for name, value in (("predictions", predictions), ("references", references)):
        if isinstance(value, str):
            raise ValueError(f"{name} must be a list of strings, got a single string")
    if len(predictions) != len(references):
        raise ValueError(
            f"got {len(predictions)} predictions but {len(references)} references: "
            f"each prediction needs exactly one reference (or one list of references)"
        )
    if len(predictions) == 0:
        raise ValueError("nothing to evaluate: predictions and references are empty")
    for i, prediction in enumerate(predictions):
        if not isinstance(prediction, str):
            raise ValueError(f"prediction {i} is {type(prediction).__name__}, not a string")


ANSWERABLE, UNANSWERABLE = "answerable", "unanswerable"
GROUP_METRICS = ("exact_match", "token_f1", "bertscore_f1")   # the per-question scores kept


def answerability(references: Sequence[Reference]) -> list[str]:
    """"unanswerable" where the reference is MS MARCO's "No Answer Present." (its passages do
    not hold the answer), else "answerable". The two behave differently: a model that always
    says "No Answer Present." scores on the first and never on the second, so every metric is
    reported for both as well as overall."""
    from course_utils.data import NO_ANSWER

    no_answer = normalize_answer(NO_ANSWER)
    return [UNANSWERABLE if any(normalize_answer(r) == no_answer for r in _as_list(reference))
            else ANSWERABLE for reference in references]


def means_by_group(per_question: dict[str, list[float]], groups: Sequence[str]) -> dict:
    """{group: {"n", metric: mean}} for every group label present, e.g. answerable and
    unanswerable; per_question: metric -> one score per question, in the order of groups."""
    result: dict[str, dict] = {}
    for group in sorted(set(groups)):
        rows = [i for i, g in enumerate(groups) if g == group]
        result[group] = {"n": len(rows), **{metric: sum(values[i] for i in rows) / len(rows)
                                             for metric, values in per_question.items()}}
    return result


def evaluate_answers(predictions: Sequence[str], references: Sequence[Reference],
                     profile: Profile | None = None, bertscore_model: str | None = None,
                     bertscore_num_layers: int | None = None, per_example: bool = True) -> dict:
    """Score answers with exact match, token F1 and BERTScore (all means, 0 to 1).

    The BERTScore model and layer come from `profile`; `bertscore_model` replaces the
    profile's model (then only `bertscore_num_layers` sets the layer) and
    `bertscore_num_layers` alone replaces the profile's layer. per_example adds the scores
    of every pair under the key "per_example", for tables of examples.
    """
    _check_pairs(predictions, references)
    if bertscore_model is None:
        if profile is None:
            raise ValueError("evaluate_answers needs profile= or bertscore_model= "
                             "(e.g. bertscore_model='roberta-large')")
        bertscore_model = profile.bertscore_model
        if bertscore_num_layers is None:
            bertscore_num_layers = profile.bertscore_num_layers
    em = [exact_match(p, r) for p, r in zip(predictions, references, strict=True)]
    f1 = [token_f1(p, r) for p, r in zip(predictions, references, strict=True)]
    bert = bertscore(predictions, references, bertscore_model, bertscore_num_layers)
    groups = answerability(references)
    per_question = {"exact_match": em, "token_f1": f1, "bertscore_f1": bert["per_example_f1"]}
    result = {
        "n": len(predictions),
        "exact_match": sum(em) / len(em),
        "token_f1": sum(f1) / len(f1),
        "bertscore_precision": bert["precision"],
        "bertscore_recall": bert["recall"],
        "bertscore_f1": bert["f1"],
        "bertscore_rescaled": bert["rescaled"],
        "bertscore_model": bert["model"],
        "bertscore_num_layers": bert["num_layers"],
        "groups": groups,                                   # answerable / unanswerable
        "by_group": means_by_group(per_question, groups),
    }
    if per_example:
        result["per_example"] = per_question
    return result


# ---------------------------------------------------------------- answering the test split


def answer_and_score(model, tokenizer, prompts: Sequence[str], references: Sequence[Reference],
                     profile: Profile, max_new_tokens: int, batch_size: int = 8,
                     desc: str = "Generating") -> tuple[list[str], dict]:
    """Greedy answers to `prompts` and their scores (evaluate_answers) in one call: what
    notebooks 02-04 do for the base model and again for the trained one.

    A prompt too long for the model's context is not generated: it gets a warning naming it,
    the answer "" (scored 0), and is listed under "too_long" in the scores (rows, count,
    limit), so the scores say how many answers were never attempted.
    """
    prompts = list(prompts)
    skipped = prompts_too_long(model, tokenizer, prompts, max_new_tokens)
    for row, tokens in skipped:
        warnings.warn(too_long_message(model, tokenizer, prompts, row, tokens, max_new_tokens,
                                       desc) + " It is scored as an empty answer.",
                      stacklevel=2)
    rows = {row for row, _ in skipped}
    fitting = [i for i in range(len(prompts)) if i not in rows]
    answers = [""] * len(prompts)
    generated = generate_answers(model, tokenizer, [prompts[i] for i in fitting],
                                 max_new_tokens=max_new_tokens, batch_size=batch_size, desc=desc)
    for i, answer in zip(fitting, generated, strict=True):
        answers[i] = answer
    scores = evaluate_answers(answers, references, profile=profile)
    scores["too_long"] = {"count": len(skipped), "rows": sorted(rows),
                          "limit": context_limit(model, tokenizer)}
    return answers, scores


SCORE_COLUMNS = ("exact_match", "token_f1", "bertscore_precision", "bertscore_recall",
                 "bertscore_f1")


def compare_scores(before: dict, after: dict, names: tuple[str, str] = ("base", "fine-tuned")):
    """A table (pandas DataFrame) of two models' scores and the change, one row per metric."""
    import pandas as pd

    table = pd.DataFrame({names[0]: [before[m] for m in SCORE_COLUMNS],
                          names[1]: [after[m] for m in SCORE_COLUMNS]}, index=SCORE_COLUMNS)
    table["change"] = table[names[1]] - table[names[0]]
    return table


# ---------------------------------------------------------------- comparing two models' logits


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
