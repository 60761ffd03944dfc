"""How the course scores answers: exact match, token F1, BERTScore and perplexity.

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
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch

from course_utils.profiles import PACKAGED_PREFIX, Profile

Reference = str | Sequence[str]  # one reference answer, or several acceptable ones

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


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
        (hub models only). Returns dict(precision, recall, f1, rescaled, model) and
        per_example_f1, the F1 of every pair.
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


def perplexity(model, dataset, collator, batch_size: int = 8) -> float:
    """Perplexity of a causal LM on a dataset, from a collator that builds `labels`."""
    return perplexity_from_loss(mean_token_nll(model, dataset, collator, batch_size))


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
    result = {
        "n": len(predictions),
        "exact_match": sum(em) / len(em),
        "token_f1": sum(f1) / len(f1),
        "bertscore_precision": bert["precision"],
        "bertscore_recall": bert["recall"],
        "bertscore_f1": bert["f1"],
        "bertscore_rescaled": bert["rescaled"],
        "bertscore_model": bert["model"],
    }
    if per_example:
        result["per_example"] = {"exact_match": em, "token_f1": f1,
                                 "bertscore_f1": bert["per_example_f1"]}
    return result
