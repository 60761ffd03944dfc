"""What does the model read? MS MARCO rows, and the prompts and training rows made from them.

One loader for MS MARCO v1.1, the same columns and features in every profile.

`full` samples the hub data set (microsoft/ms_marco, config v1.1), or a local folder in the
hub's layout (`datasets.load_dataset(folder, "v1.1")`, e.g. the one the full dry run builds);
`tiny` reads the mini MS MARCO shipped in course_utils/resources/mini_msmarco (built by
course_tools/mini_msmarco.py).
Both give a DatasetDict with `train`, `validation` and `test`, sized by the profile and chosen with
its seed, so every notebook of a profile is judged on the same test queries.

A row looks like this (one query, its candidate passages, the human answer):

    {"answers": ["about 24 hours and 37 minutes"],
     "passages": {"is_selected": [0, 1, 0], "passage_text": [...], "url": [...]},
     "query": "how long is a day on mars", "query_id": 17, "query_type": "numeric",
     "wellFormedAnswers": []}
"""

from __future__ import annotations

import copy
import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, Features, Sequence, Value

from course_utils.config import MIN_SPLIT_ROWS, Profile

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
    """Walk `order` (indices into rows), skip malformed and repeated rows, keep the first
    `size` good ones.

    Warns once with the number of skipped rows and why. Raises when fewer good rows are left
    than MIN_SPLIT_ROWS (course_utils/config.py) asks for the split, or, for the test split,
    fewer than the profile's test_size: every notebook of a profile is judged on the same
    test questions. A train or validation split smaller than asked for only warns.
    """
    chosen, skipped, seen = [], Counter(), set()
    for index in order:
        if len(chosen) == size:
            break
        row = rows[int(index)]
        problem = row_problem(row)
        if problem is None:
            key = (row["query_id"], row["query"])   # the same question twice
            if key in seen:
                problem = "a repeated row (same query_id and query)"
            seen.add(key)
        if problem is None:
            chosen.append(int(index))
        else:
            skipped[problem] += 1
    if skipped:
        reasons = ", ".join(f"{count} x {why}" for why, count in skipped.most_common())
        warnings.warn(f"skipped {sum(skipped.values())} malformed rows in split {split!r} "
                      f"({where}): {reasons}", UserWarning, stacklevel=3)
    fix = (f"Check {where} (every row needs a query, a non-empty list of answers and "
           "equal-length passage lists; no question twice), rebuild the shipped files with "
           "`python -m course_tools.mini_msmarco build`, or use a profile with smaller sizes")
    needed = size if split == "test" else min(size, MIN_SPLIT_ROWS.get(split, 1))
    if len(chosen) < max(needed, 1):
        raise ValueError(f"Split {split!r} has {len(chosen) or 'no'} usable rows, fewer than the "
                         f"{needed} it needs ({sum(skipped.values())} skipped, {len(rows)} in "
                         f"all). {fix}.")
    if len(chosen) < size:
        warnings.warn(f"split {split!r} of {where} has {len(chosen)} usable rows, fewer than "
                      f"the {size} the profile asks for: training and evaluation use "
                      f"{len(chosen)}.", UserWarning, stacklevel=3)
    return sorted(chosen)  # a stable order: the order of the source


def _read_jsonl(path: Path) -> list:
    """One item per line; a line that is not JSON becomes None (a malformed row), with one
    warning naming the file and the lines. Bytes that are not UTF-8 raise a ValueError
    naming the file and the line (a UTF-8 byte-order mark is allowed)."""
    raw = path.read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ValueError(f"{path} is saved as UTF-16 (or UTF-32), not UTF-8: save it as UTF-8 "
                         "or rebuild it with `python -m course_tools.mini_msmarco build`.")
    try:
        text = raw.decode("utf-8-sig")   # a UTF-8 byte-order mark is dropped
    except UnicodeDecodeError as error:
        line = raw[:error.start].count(b"\n") + 1
        raise ValueError(f"{path} is not UTF-8 text: byte {raw[error.start]:#04x} on line "
                         f"{line} (another encoding, or a damaged file). Save it as UTF-8 or "
                         "rebuild it with `python -m course_tools.mini_msmarco build`.") from None
    rows, bad = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                rows.append(None)
                bad.append(number)
    if bad:
        last = " (the last line is cut short: the file was not written or copied completely)" \
            if bad[-1] == len(text.splitlines()) and not text.endswith("\n") else ""
        shown = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        warnings.warn(f"{path}: line(s) {shown} are not valid JSON and are skipped{last}",
                      UserWarning, stacklevel=3)
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
                "`python -m course_tools.mini_msmarco build`.")
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
    _check_columns(hub, where)
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
    splits = {}
    for name, (source, indices) in picks.items():
        chosen = hub[source].select(indices).select_columns(list(MSMARCO_FEATURES))
        try:
            splits[name] = chosen.cast(MSMARCO_FEATURES)   # e.g. int64 ids to the card's int32
        except (TypeError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
            raise ValueError(f"{where}, split {source!r}: its features {chosen.features} do "
                             f"not cast to MS MARCO v1.1's {MSMARCO_FEATURES} ({error})") from error
    return DatasetDict(splits)


def _check_columns(hub: DatasetDict, where: str) -> None:
    """The splits the loader reads exist and hold MS MARCO v1.1's columns (a wrong folder or
    config would otherwise fail deep inside `datasets`)."""
    for split in ("train", "validation"):
        if split not in hub:
            raise ValueError(f"{where} has no {split!r} split (it has {', '.join(hub)}); the "
                             "loader samples train from 'train', validation and test from "
                             "'validation'.")
        missing = [name for name in MSMARCO_FEATURES if name not in hub[split].column_names]
        if missing:
            raise ValueError(f"{where}, split {split!r}, lacks the MS MARCO v1.1 columns "
                             f"{missing} (it has {', '.join(hub[split].column_names)}).")


def load_msmarco(profile: Profile) -> DatasetDict:
    """MS MARCO v1.1 as train/validation/test for this profile (features: MSMARCO_FEATURES).

    Malformed and repeated rows are skipped with one warning per split; sizes are capped at
    the profile's train_size, validation_size and test_size. A split left with fewer rows than
    MIN_SPLIT_ROWS (course_utils/config.py), or a test split with fewer than test_size, is
    refused with a ValueError naming the file; a shipped file that is not UTF-8 too.
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


# --- prompts and training rows ---------------------------------------------------------------
# Turning MS MARCO rows into prompts and training rows.
#
# A QA training row is the prompt (system message, question, context) followed by the answer
# and the end token. The model is trained only on the answer and the end token: every prompt
# position has the label -100, which the loss ignores. Keeping the end token's label is what
# teaches the model to stop after the answer.
#
#     prompt tokens                         answer tokens        end
#     <|im_start|>system ... assistant\n    about 24 hours ...   <|im_end|>
#     labels: -100 -100 ... -100            about 24 hours ...   <|im_end|>

SYSTEM_PROMPT = (
    "Answer the question using only the context. Reply with a short answer of a few words, "
    "not a full sentence. If the context does not contain the answer, reply exactly: "
    "No Answer Present."
)
RAG_INSTRUCTION = (
    "Answer the question using only the numbered sources. Reply with a short answer of a few "
    "words copied from the source, then the number of the source you used in brackets, like "
    "[1]. If the sources do not contain the answer, reply exactly: " + NO_ANSWER
)
CLOSED_BOOK_INSTRUCTION = (  # the same options as RAG_INSTRUCTION, without the sources
    "Answer the question with a short answer of a few words. If you do not know the "
    "answer, reply exactly: " + NO_ANSWER
)
IGNORE_INDEX = -100  # the label PyTorch's cross-entropy skips


def uses_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_prompt(tokenizer, instruction: str, user: str, system: bool = True) -> str:
    """Instruction and user message through the tokenizer's chat template, assistant turn open.

    system: the instruction is a system message; False puts it at the start of the user
    message (DeepSeek-R1 is meant to be used without a system prompt). `enable_thinking=False`
    turns Qwen3's reasoning block off; templates without that switch ignore it. A tokenizer
    without a chat template (a base model) gets plain text ending in "Answer:".
    """
    if not uses_chat_template(tokenizer):
        return f"{instruction}\n\n{user}\nAnswer:"
    if system:
        messages = [{"role": "system", "content": instruction}, {"role": "user", "content": user}]
    else:
        messages = [{"role": "user", "content": f"{instruction}\n\n{user}"}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                         enable_thinking=False)


def qa_prompt(tokenizer, question: str, context: str) -> str:
    """The prompt for one question and its gold passage (notebooks 02-04): SYSTEM_PROMPT,
    then "Question: ...\\nContext: ...", ready for the answer to follow."""
    return chat_prompt(tokenizer, SYSTEM_PROMPT, f"Question: {question}\nContext: {context}")


def format_sources(context: list[dict]) -> str:
    """[1] first passage\\n\\n[2] second passage ... (context: dicts with a "text")"""
    return "\n\n".join(f"[{n}] {p['text']}" for n, p in enumerate(context, start=1))


def rag_prompt(tokenizer, question: str, context: list[dict], system: bool = True) -> str:
    """Instruction, numbered retrieved sources and question (notebook 05)."""
    user = f"Sources:\n{format_sources(context)}\n\nQuestion: {question}"
    return chat_prompt(tokenizer, RAG_INSTRUCTION, user, system)


def closed_book_prompt(tokenizer, question: str, system: bool = True) -> str:
    """The same model without sources: only what it memorized in training can answer. Like
    RAG, it may reply "No Answer Present." when it does not know."""
    return chat_prompt(tokenizer, CLOSED_BOOK_INSTRUCTION, f"Question: {question}", system)


def few_shot_examples(split: Dataset, n: int = 3, unanswerable: int = 1) -> list[dict]:
    """n rows of `split` to show as solved examples: the ones with the shortest gold passages
    (short prompts), `unanswerable` of them answered "No Answer Present.", the others not.
    Take them from the training split, never from the questions being scored."""
    if not 0 <= unanswerable <= n:
        raise ValueError(f"unanswerable must be between 0 and n={n}, got {unanswerable}")
    rows = sorted(split, key=lambda row: (len(selected_passage(row).split()), row["query"]))
    refusals = [row for row in rows if reference_answer(row) == NO_ANSWER][:unanswerable]
    answers = [row for row in rows if reference_answer(row) != NO_ANSWER][:n - unanswerable]
    if len(refusals) + len(answers) < n:
        raise ValueError(f"the split holds too few rows for {n} examples ({len(answers)} "
                         f"answerable, {len(refusals)} unanswerable found)")
    return answers + refusals


def few_shot_prompt(tokenizer, question: str, context: str, examples: list[dict]) -> str:
    """qa_prompt with solved examples before the question: each example (an MS MARCO row) is
    an earlier user turn, "Question: ...\nContext: <its gold passage>", answered by an
    assistant turn holding its reference answer. The model learns the answer style from the
    conversation instead of from training. Without a chat template: the same turns as text."""
    turns = [(f"Question: {row['query']}\nContext: {selected_passage(row)}", reference_answer(row))
             for row in examples]
    user = f"Question: {question}\nContext: {context}"
    if not uses_chat_template(tokenizer):
        shown = "".join(f"{asked}\nAnswer: {answer}\n\n" for asked, answer in turns)
        return f"{SYSTEM_PROMPT}\n\n{shown}{user}\nAnswer:"
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    for asked, answer in turns:
        messages += [{"role": "user", "content": asked}, {"role": "assistant", "content": answer}]
    messages.append({"role": "user", "content": user})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                         enable_thinking=False)


def qa_test_set(tokenizer, data: DatasetDict, n_test: int = 0) -> tuple[Dataset, list, list]:
    """(test rows, prompts, reference answers) of the shared test split, every method's exam
    in notebooks 02-04; n_test > 0 keeps only the first n_test questions."""
    test = data["test"] if not n_test else data["test"].select(range(min(n_test, len(data["test"]))))
    prompts = [qa_prompt(tokenizer, row["query"], selected_passage(row)) for row in test]
    return test, prompts, [reference_answer(row) for row in test]


def prompt_token_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids of a prompt from qa_prompt. A chat template already wrote the special tokens,
    so none are added; a plain prompt gets the tokenizer's own (a BOS token, if it uses one)."""
    return tokenizer(prompt, add_special_tokens=not uses_chat_template(tokenizer))["input_ids"]


def _answer_ids(tokenizer, answer: str) -> list[int]:
    """Answer tokens plus the end token. After "Answer:" the answer starts with a space."""
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no eos_token_id: set tokenizer.eos_token to the "
                         "token that ends a model reply (e.g. '<|im_end|>').")
    text = answer if uses_chat_template(tokenizer) else " " + answer
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def tokenize_qa(tokenizer, question: str, context: str, answer: str,
                max_length: int) -> dict[str, list[int]]:
    """input_ids, attention_mask and labels of one QA training row of at most max_length tokens.

    Labels are -100 on every prompt token and equal to input_ids on the answer and end token.
    A row that is too long loses the end of its CONTEXT, never the answer.
    """
    answer_ids = _answer_ids(tokenizer, answer)
    budget = max_length - len(answer_ids)  # room left for the prompt
    prompt_ids = prompt_token_ids(tokenizer, qa_prompt(tokenizer, question, context))
    if len(prompt_ids) > budget:
        bare = len(prompt_token_ids(tokenizer, qa_prompt(tokenizer, question, "")))
        if bare > budget:
            raise ValueError(
                f"max_length={max_length} is too small: the prompt without context takes {bare} "
                f"tokens and the answer {len(answer_ids)}. Raise max_length (profile.max_length) "
                "or shorten the question or answer.")
        context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        keep = len(context_ids)
        while len(prompt_ids) > budget:
            # drop as many context tokens as the prompt is too long; decoding and encoding
            # again can merge tokens differently, so check and repeat (keep=0 always fits)
            keep = max(0, keep - (len(prompt_ids) - budget))
            short_context = tokenizer.decode(context_ids[:keep])
            prompt_ids = prompt_token_ids(tokenizer, qa_prompt(tokenizer, question, short_context))
    input_ids = prompt_ids + answer_ids
    return {
        "input_ids": input_ids,
        "attention_mask": [1] * len(input_ids),
        "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
    }


def tokenize_qa_split(tokenizer, split: Dataset, max_length: int) -> Dataset:
    """Training rows for a split: question, SELECTED passage as context, reference answer.

    The selected passage is the one MS MARCO marks as holding the answer (the first passage,
    which the original course used, often does not). Unanswerable rows train the reply
    "No Answer Present." on their first passage.
    """
    rows = [tokenize_qa(tokenizer, row["query"], selected_passage(row), reference_answer(row),
                        max_length) for row in split]
    return Dataset.from_dict({key: [row[key] for row in rows]
                              for key in ("input_ids", "attention_mask", "labels")})


def qa_collator(tokenizer):
    """Pads each batch to its own longest row: input_ids with the pad token, attention_mask
    with 0, labels with -100. Rows are never padded to max_length.

    It pads on the right whatever the tokenizer's padding_side (generation sets "left"), on a
    copy of the tokenizer. To waste little padding, let the Trainer batch rows of similar
    length together: `TrainingArguments(train_sampling_strategy="group_by_length")` in
    transformers 5.x (4.x spelled it `group_by_length=True`, which 5.x rejects).
    """
    from transformers import DataCollatorForSeq2Seq

    right_padding = copy.deepcopy(tokenizer)
    right_padding.padding_side = "right"
    if right_padding.pad_token_id is None:
        right_padding.pad_token = right_padding.eos_token
    return DataCollatorForSeq2Seq(right_padding, padding="longest",
                                  label_pad_token_id=IGNORE_INDEX)


def group_texts(tokenizer, texts: list[str], block_size: int) -> Dataset:
    """Causal-LM training blocks from raw texts (notebook 01, domain adaptation).

    Every text is tokenized, followed by the end token, and all are joined into one stream
    that is cut into blocks of exactly block_size tokens; the incomplete last block is dropped.
    Labels are a copy of input_ids: the model shifts them itself to predict the next token.
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no eos_token_id to separate documents with.")
    texts, stream = list(texts), []  # stream: every token of every text, in order
    for ids in (tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []):
        stream += ids + [tokenizer.eos_token_id]
    n_blocks = len(stream) // block_size
    if n_blocks == 0:
        raise ValueError(f"The texts hold {len(stream)} tokens, less than one block of "
                         f"{block_size}: give more text or a smaller block_size.")
    blocks = [stream[i * block_size:(i + 1) * block_size] for i in range(n_blocks)]  # (N, T)
    return Dataset.from_dict({
        "input_ids": blocks,
        "attention_mask": [[1] * block_size for _ in blocks],
        "labels": [list(block) for block in blocks],
    })
