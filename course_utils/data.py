"""One loader for MS MARCO v1.1, the same columns and features in both profiles.

`full` samples the hub data set (microsoft/ms_marco, config v1.1); `tiny` reads the mini MS
MARCO shipped in course_utils/resources/mini_msmarco (see course_utils/mini_msmarco.py). Both
give a DatasetDict with `train`, `validation` and `test`, sized by the profile and chosen with
its seed, so every notebook of a profile is judged on the same test queries.

A row looks like this (one query, its candidate passages, the human answer):

    {"answers": ["about 24 hours and 37 minutes"],
     "passages": {"is_selected": [0, 1, 0], "passage_text": [...], "url": [...]},
     "query": "how long is a day on mars", "query_id": 17, "query_type": "numeric",
     "wellFormedAnswers": []}
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, Features, Sequence, Value

from course_utils.profiles import Profile

NO_ANSWER = "No Answer Present."  # MS MARCO's answer when no passage holds one
MINI_DIR = Path(__file__).parent / "resources" / "mini_msmarco"
SPLITS = ("train", "validation", "test")

# The features the hub declares for microsoft/ms_marco v1.1 (tests/test_data.py checks them
# against the dataset card). `passages` is a Sequence of a dict, which `datasets` stores as a
# dict of lists: {"is_selected": [...], "passage_text": [...], "url": [...]}.
MSMARCO_FEATURES = Features({
    "answers": Sequence(Value("string")),
    "passages": Sequence({
        "is_selected": Value("int32"),
        "passage_text": Value("string"),
        "url": Value("string"),
    }),
    "query": Value("string"),
    "query_id": Value("int32"),
    "query_type": Value("string"),
    "wellFormedAnswers": Sequence(Value("string")),
})


class DatasetUnavailableError(OSError):
    """The hub data set cannot be loaded here (most often: the machine is offline)."""


def row_problem(row) -> str | None:
    """Why a row is unusable, in a few words, or None when it is fine."""
    if not isinstance(row, dict):
        return "not a JSON object"
    missing = [name for name in MSMARCO_FEATURES if name not in row]
    if missing:
        return f"missing field {missing[0]!r}"
    if not isinstance(row["query"], str) or not row["query"].strip():
        return "empty query"
    answers = row["answers"]
    if (not isinstance(answers, list) or not answers or not isinstance(answers[0], str)
            or not answers[0].strip() or not all(isinstance(a, str) for a in answers)):
        return "answers is not a non-empty list of strings"
    query_id = row["query_id"]
    if not isinstance(query_id, int) or isinstance(query_id, bool) or not 0 <= query_id < 2**31:
        return "query_id is not a non-negative int32"
    if not isinstance(row["query_type"], str):
        return "query_type is not a string"
    well_formed = row["wellFormedAnswers"]
    if not isinstance(well_formed, list) or not all(isinstance(a, str) for a in well_formed):
        return "wellFormedAnswers is not a list of strings"
    passages = row["passages"]
    if not isinstance(passages, dict):
        return "passages is not an object"
    columns = [passages.get(key) for key in ("is_selected", "passage_text", "url")]
    if not all(isinstance(column, list) for column in columns):
        return "passages lacks is_selected, passage_text or url lists"
    selected, texts, urls = columns
    if not texts:
        return "no passages"
    if not len(selected) == len(texts) == len(urls):
        return "passage lists of different lengths"
    if not all(type(flag) is int and flag in (0, 1) for flag in selected):
        return "is_selected is not 0/1"
    if not all(isinstance(text, str) and text.strip() for text in texts):
        return "empty passage text"
    if not all(isinstance(url, str) for url in urls):
        return "url is not a string"
    return None


def _choose(rows, order, size: int, split: str, where: str) -> list[int]:
    """Walk `order` (indices into rows), skip malformed rows, keep the first `size` good ones.

    Warns once with the number of skipped rows and why; raises if no good row is left.
    """
    chosen, skipped = [], Counter()
    for index in order:
        if len(chosen) == size:
            break
        problem = row_problem(rows[int(index)])
        if problem is None:
            chosen.append(int(index))
        else:
            skipped[problem] += 1
    if skipped:
        reasons = ", ".join(f"{count} x {why}" for why, count in skipped.most_common())
        warnings.warn(f"skipped {sum(skipped.values())} malformed rows in split {split!r}: "
                      f"{reasons}", UserWarning, stacklevel=3)
    if not chosen:
        raise ValueError(f"Split {split!r} has no usable rows ({sum(skipped.values())} "
                         f"malformed, {len(rows)} in all). Check {where}: every row needs a "
                         "query, a non-empty list of answers and equal-length passage lists.")
    return sorted(chosen)  # a stable order: the order of the source


def _read_jsonl(path: Path) -> list:
    """One item per line; a line that is not JSON becomes None (a malformed row)."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                rows.append(None)
    return rows


def _load_from_folder(folder: Path, profile: Profile) -> DatasetDict:
    """The three splits from `folder`/{train,validation,test}.jsonl, sized by the profile."""
    sizes = {"train": profile.train_size, "validation": profile.validation_size,
             "test": profile.test_size}
    splits = {}
    for name in SPLITS:
        path = Path(folder) / f"{name}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing. The mini MS MARCO files are built from the source with "
                "`python -m course_utils.mini_msmarco build`.")
        rows = _read_jsonl(path)
        order = np.random.default_rng(profile.seed).permutation(len(rows))
        chosen = _choose(rows, order, sizes[name], name, str(path))
        kept = [{key: rows[i][key] for key in MSMARCO_FEATURES} for i in chosen]
        splits[name] = Dataset.from_list(kept, features=MSMARCO_FEATURES)
    return DatasetDict(splits)


def _load_from_hub(profile: Profile) -> DatasetDict:
    """Seeded samples of the hub data: train from its train split, validation and test from
    disjoint parts of its validation split (the hub's test split has no answers)."""
    import datasets

    try:
        hub = datasets.load_dataset(profile.dataset, profile.dataset_config)
    except OSError as error:  # ConnectionError and FileNotFoundError are OSErrors
        raise DatasetUnavailableError(
            f"Could not load {profile.dataset!r} ({profile.dataset_config}) from the Hugging "
            f"Face Hub ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})."
            "\nThis machine is probably offline, or the data set is not in the local cache. "
            "The `tiny` profile runs fully offline on the mini MS MARCO shipped with "
            "course_utils: set the environment variable COURSE_PROFILE=tiny, or pass "
            "`-p PROFILE tiny` to papermill. The `full` profile needs internet (Kaggle/Colab "
            "with the internet switch on) or a pre-filled Hugging Face cache.") from error
    where = f"{profile.dataset} {profile.dataset_config}"
    # the same permutation as hub["train"].shuffle(seed=profile.seed)
    order = np.random.default_rng(profile.seed).permutation(len(hub["train"]))
    train = _choose(hub["train"], order, profile.train_size, "train", where)
    # test is drawn first, so it depends only on the seed and test_size
    order = np.random.default_rng(profile.seed).permutation(len(hub["validation"]))
    test = _choose(hub["validation"], order, profile.test_size, "test", where)
    taken = set(test)
    rest = [i for i in order if i not in taken]
    validation = _choose(hub["validation"], rest, profile.validation_size, "validation", where)
    picks = {"train": ("train", train), "validation": ("validation", validation),
             "test": ("validation", test)}
    return DatasetDict({
        name: hub[source].select(indices).select_columns(list(MSMARCO_FEATURES))
        .cast(MSMARCO_FEATURES)
        for name, (source, indices) in picks.items()
    })


def load_msmarco(profile: Profile) -> DatasetDict:
    """MS MARCO v1.1 as train/validation/test for this profile (features: MSMARCO_FEATURES).

    Malformed rows are skipped with one warning per split; sizes are capped at the profile's
    train_size, validation_size and test_size.
    """
    if profile.dataset == "mini":
        return _load_from_folder(MINI_DIR, profile)
    return _load_from_hub(profile)


def selected_passage(row: dict) -> str:
    """The passage marked is_selected=1 (the first such one).

    When no passage is selected (unanswerable queries, some hub rows) it returns the first
    passage, so a prompt always has a context.
    """
    passages = row["passages"]
    for flag, text in zip(passages["is_selected"], passages["passage_text"], strict=True):
        if flag == 1:
            return text
    return passages["passage_text"][0]


def reference_answer(row: dict) -> str:
    """The human answer the model is scored against: answers[0]."""
    return row["answers"][0]


def passage_texts(split: Dataset) -> list[str]:
    """Every distinct passage text of a split, in order of first appearance (a RAG corpus)."""
    seen = {}
    for passages in split["passages"]:
        for text in passages["passage_text"]:
            seen.setdefault(text, None)
    return list(seen)
