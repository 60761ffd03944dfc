"""Turning MS MARCO rows into prompts and training rows.

A QA training row is the prompt (system message, question, context) followed by the answer
and the end token. The model is trained only on the answer and the end token: every prompt
position has the label -100, which the loss ignores. Keeping the end token's label is what
teaches the model to stop after the answer.

    prompt tokens                         answer tokens        end
    <|im_start|>system ... assistant\\n    about 24 hours ...   <|im_end|>
    labels: -100 -100 ... -100            about 24 hours ...   <|im_end|>
"""

from __future__ import annotations

import copy

from datasets import Dataset

from course_utils.data import reference_answer, selected_passage

SYSTEM_PROMPT = (
    "Answer the question using only the context. Reply with a short answer of a few words, "
    "not a full sentence. If the context does not contain the answer, reply exactly: "
    "No Answer Present."
)
PLAIN_TEMPLATE = "Question: {question}\nContext: {context}\nAnswer:"
IGNORE_INDEX = -100  # the label PyTorch's cross-entropy skips


def uses_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def qa_prompt(tokenizer, question: str, context: str) -> str:
    """The prompt text for one question and its context, ready for the answer to follow.

    With a chat template: a system message (SYSTEM_PROMPT) and a user message
    "Question: ...\\nContext: ...", then the assistant turn is opened. `enable_thinking=False`
    turns Qwen3's reasoning block off; templates without that switch ignore it. Without a
    chat template (a base model): PLAIN_TEMPLATE, which ends in "Answer:".
    """
    if not uses_chat_template(tokenizer):
        return PLAIN_TEMPLATE.format(question=question, context=context)
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"Question: {question}\nContext: {context}"},
    ]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                         enable_thinking=False)


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
