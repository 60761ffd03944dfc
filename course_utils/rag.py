"""How does a retrieved passage become a cited, scored answer?

Notebook 05 writes the steps of its RAG workflow itself (retrieve, route, generate, no_answer)
and wires them into a LangGraph graph:

    START -> retrieve --(best score >= threshold)--> generate  -> END
                      \\--(otherwise)-------------> no_answer -> END

This module holds what those steps share: the state they pass along (RAGState), the parsing
of a raw model output into the state's answer fields (answer_fields), `run_batched`, which runs
the same step functions over many questions at once for evaluation, and `draw_graph`, which
draws a compiled graph offline. The prompts live in course_utils/data.py (rag_prompt,
closed_book_prompt).

The state keeps two versions of the answer:
  answer        what a user sees: the short answer, then "Sources: [1] <url>" lines
  short_answer  the plain answer (no citations, no reasoning): this is what gets scored
Reasoning models (DeepSeek-R1) think between <think> and </think> first; the thoughts are
kept in `reasoning` and never scored, and `forced` says whether they ran out of the thinking
budget and were closed for the model (course_utils.evaluation.generate_with_thinking_budget).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TypedDict

from course_utils.data import NO_ANSWER
from course_utils.evaluation import THINK_CLOSE, THINK_OPEN, strip_reasoning


class RAGState(TypedDict, total=False):
    query: str                  # the user's question (input)
    context: list[dict]         # retrieved passages: id, text, url, score (best first)
    best_score: float           # cosine similarity of the best passage
    retrieved: bool             # True when the best passage passed the threshold
    answer: str                 # shown to the user: short answer + "Sources: ..." lines
    short_answer: str           # the answer alone: what evaluation scores
    sources: list[int]          # source numbers ([1] = first passage) the answer rests on
    reasoning: str              # a reasoning model's thoughts, if any
    forced: bool                # its thoughts ran out of budget and were closed for it


# --- from a raw model output to the answer fields --------------------------------------------

_CITATION = re.compile(r"\s*\[(\d+(?:\s*,\s*\d+)*)\]")
_SOURCES_LINE = re.compile(r"\n?\s*\(?sources?\s*:.*$", re.IGNORECASE | re.DOTALL)
# Markdown that opens a line: a heading or a list bullet ("- ", "* ", never "-5" or "#1").
_LINE_MARKUP = re.compile(r"^(?:#{1,6}\s+|[-*•]\s+)")
# Bold text anywhere (**x**), and the LaTeX box math-tuned models put answers in. Underscores
# are left alone: "__init__" is an answer, not markdown.
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_LATEX = re.compile(r"\$*\\(?:boxed|text)\{([^{}]*)\}\$*")
# One pair of markers around the whole answer: *x*, `x`, 'x' (a final period may follow).
_WRAPPED = re.compile(r"^(?:\*([^*]+)\*|`([^`]+)`|'([^']+)'|‘([^’]+)’)([.!]?)$")
# Words before the answer: "Answer:", "Final answer:", "The short answer is", "So, the answer
# to the question is:", "A:". Each needs its colon or "is", so "Answering machines" stays.
_LEAD_IN = re.compile(
    r"^\*{0,2}\s*(?:(?:so|thus|therefore|hence)\s*,?\s*)?"
    r"(?:(?:(?:the|my)\s+)?(?:final\s+|short\s+|correct\s+)?answer"
    r"(?:\s+to\s+(?:the|this|your)\s+question)?\*{0,2}\s*(?::|\bis\b\s*:?)|a\s*:)"
    r"\s*\*{0,2}\s*",
    re.IGNORECASE)
# A line that only announces the answer ("### Final Answer", "**Answer**"): the next line holds it.
_LEAD_ONLY = re.compile(r"^(?:the\s+)?(?:final\s+|short\s+)?answer\s*:?$", re.IGNORECASE)
_QUOTES = "\"“”"  # double quotes; single ones only around the whole answer (_WRAPPED)


def _answer_in_line(line: str) -> str:
    """One line without its markdown, lead-in, wrappers and quotes ("" if nothing is left)."""
    text = _BOLD.sub(r"\1", _LINE_MARKUP.sub("", line.strip()))
    text = _LATEX.sub(r"\1", _LATEX.sub(r"\1", text))  # \boxed{\text{x}} holds two
    text = _LEAD_IN.sub("", text.strip()).strip()
    if _LEAD_ONLY.match(text) or not any(ch.isalnum() for ch in text):
        return ""  # a line that announces the answer, or only a rule such as "---"
    text = text.strip().strip(_QUOTES).strip()
    wrapped = _WRAPPED.match(text)
    if wrapped:
        *inner, end = wrapped.groups()
        text = next(part for part in inner if part) + end
    return text.strip()


def clean_answer(text: str) -> str:
    """The first line of an answer that holds one, without reasoning, markdown, a lead-in such
    as "The answer is:" or "**Final answer:**", a trailing "Sources:" part or quotes.
    Closed-book and RAG answers are cleaned alike."""
    text = _SOURCES_LINE.sub("", strip_reasoning(text))
    answer = next((found for line in text.splitlines() if (found := _answer_in_line(line))), "")
    if NO_ANSWER.lower().rstrip(".") in answer.lower():
        return NO_ANSWER
    return answer


def parse_answer(raw: str, n_sources: int, prompt_opens_thinking: bool = False) -> dict:
    """Split a raw model output into short_answer, cited source numbers and reasoning.

    n_sources: how many numbered sources the prompt showed; citations outside 1..n_sources
        are dropped.
    prompt_opens_thinking: the prompt ends in <think> (DeepSeek-R1's template writes it), so
        the output is reasoning until </think>; without one, generation stopped mid-thought
        and there is no answer yet.
    """
    if THINK_CLOSE in raw:
        reasoning = raw[:raw.rfind(THINK_CLOSE)].replace(THINK_OPEN, "").strip()
    elif prompt_opens_thinking:
        return {"short_answer": "", "sources": [], "reasoning": raw.strip()}
    else:
        reasoning = ""
    answer = clean_answer(raw)
    cited = sorted({int(n) for group in _CITATION.findall(answer)
                    for n in group.split(",") if 1 <= int(n) <= n_sources})
    short = _CITATION.sub("", answer).strip()
    return {"short_answer": short, "sources": cited, "reasoning": reasoning}


def answer_with_sources(short_answer: str, sources: Sequence[int],
                        context: Sequence[dict]) -> str:
    """The text shown to a user: the answer, then one "[n] url" line per source used."""
    if short_answer == NO_ANSWER or not sources:
        return short_answer
    lines = [f"[{n}] {context[n - 1]['url'] or context[n - 1]['id']}" for n in sources]
    return short_answer + "\n\nSources: " + "; ".join(lines)


def answer_fields(raw: str, context: Sequence[dict], prompt: str) -> dict:
    """The state fields a generate step returns for one raw model output: answer,
    short_answer, sources and reasoning.

    context: the passages the prompt showed as [1], [2], ... (empty for a closed-book prompt);
    prompt: the prompt itself, to see whether it opened a <think> block. An answer that cites
    nothing is shown with every passage it was given; a refusal, or an output cut off
    mid-thought, rests on none.
    """
    opens_thinking = prompt.rstrip().endswith(THINK_OPEN)
    parsed = parse_answer(raw, len(context), prompt_opens_thinking=opens_thinking)
    if parsed["short_answer"] in (NO_ANSWER, ""):
        parsed["sources"] = []
    elif not parsed["sources"]:
        parsed["sources"] = list(range(1, len(context) + 1))
    answer = answer_with_sources(parsed["short_answer"], parsed["sources"], context)
    return {"answer": answer, **parsed}


# --- the graph's steps over many questions ----------------------------------------------------

BatchStep = Callable[[list], list[dict]]   # many inputs -> one state update each, same order
ROUTES = ("generate", "no_answer")


def _check_updates(step: str, updates, expected: int) -> list[dict]:
    updates = list(updates)
    if len(updates) != expected or not all(isinstance(u, dict) for u in updates):
        raise ValueError(f"{step} must return one dict of state updates per input, in order: "
                         f"got {len(updates)} items for {expected} inputs")
    return updates


def run_batched(queries: Sequence[str], retrieve_many: BatchStep,
                route: Callable[[RAGState], str], generate_many: BatchStep,
                no_answer: Callable[[RAGState], dict]) -> list[RAGState]:
    """The final states of many questions, computed with the graph's own step functions.

    retrieve_many(queries) and generate_many(states) are the batched retrieve and generate
    steps (the graph's nodes call them with one question); route and no_answer are the
    graph's conditional edge and node. Every question is retrieved in one call, routed, the
    ones routed to "generate" are answered in one call, the rest by no_answer. The states
    come back in the order of `queries`, as the graph would leave them.
    """
    queries = list(queries)
    if not queries:
        return []
    retrieved = _check_updates("retrieve_many", retrieve_many(queries), len(queries))
    states: list[RAGState] = [{"query": q, **u} for q, u in zip(queries, retrieved, strict=True)]
    routes = [route(state) for state in states]
    unknown = sorted(set(routes) - set(ROUTES))
    if unknown:
        raise ValueError(f"route returned {unknown}; the graph's routes are {ROUTES}")
    todo = [state for state, to in zip(states, routes, strict=True) if to == "generate"]
    if todo:
        for state, update in zip(todo, _check_updates("generate_many", generate_many(todo),
                                                      len(todo)), strict=True):
            state.update(update)
    for state, to in zip(states, routes, strict=True):
        if to == "no_answer":
            state.update(no_answer(state))
    return states


def draw_graph(app) -> tuple[str, str]:
    """(Mermaid text, ASCII drawing) of a compiled graph, both made offline.

    draw_mermaid_png() is never used: it sends the graph to a web service.
    """
    drawable = app.get_graph()
    try:
        ascii_art = drawable.draw_ascii()
    except ImportError:  # grandalf missing
        ascii_art = "(install grandalf for an ASCII drawing)"
    return drawable.draw_mermaid(), ascii_art
