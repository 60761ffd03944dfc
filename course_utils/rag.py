"""Retrieval-augmented generation as a LangGraph workflow.

    START -> retrieve --(best score >= threshold)--> generate  -> END
                      \\--(otherwise)-------------> no_answer -> END

`retrieve` finds the k passages most similar to the question. If even the best one scores
below the threshold, the question is about something the corpus does not cover and
`no_answer` replies "No Answer Present." without calling the language model. Otherwise
`generate` shows the model the passages as numbered sources [1], [2], ... and asks for a short
answer that cites them.

The state keeps two versions of the answer:
  answer        what a user sees: the short answer, then "Sources: [1] <url>" lines
  short_answer  the plain answer (no citations, no reasoning): this is what gets scored
Reasoning models (DeepSeek-R1) think between <think> and </think> first; the thoughts are
kept in `reasoning` and never scored.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypedDict

from course_utils.data import NO_ANSWER
from course_utils.generation import THINK_CLOSE, THINK_OPEN, strip_reasoning
from course_utils.retrieval import PassageStore, RetrievedPassage, Retriever

# Cosine similarity of the best passage below which a question counts as off-topic. Calibrated
# with all-MiniLM-L6-v2 on the mini MS MARCO: about 1 % of its train and validation questions
# score lower (their 1st percentile measured 0.352), while questions about things the corpus
# does not cover mostly do ("airspeed velocity of an unladen swallow": 0.30). Notebook 05
# plots both. A larger corpus covers more topics and may need a higher threshold.
DEFAULT_THRESHOLD = 0.35

RAG_INSTRUCTION = (
    "Answer the question using only the numbered sources. Reply with a short answer of a few "
    "words copied from the source, then the number of the source you used in brackets, like "
    "[1]. If the sources do not contain the answer, reply exactly: " + NO_ANSWER
)
CLOSED_BOOK_INSTRUCTION = "Answer the question with a short answer of a few words."

Generator = Callable[[list[str]], list[str]]   # prompts -> raw model outputs, same order


@dataclass(frozen=True)
class RagSettings:
    k: int = 3                              # passages retrieved and shown per question
    threshold: float = DEFAULT_THRESHOLD    # best cosine score needed to call the model
    max_new_tokens: int = 48                # answer tokens; R1 models need room to reason
    batch_size: int = 8                     # prompts per generate call in answer_batch
    system_prompt: bool = False             # instructions as a system message (else: user)
    enable_thinking: bool | None = None     # chat-template switch (Qwen3); None = its default

    def __post_init__(self):
        if self.k <= 0:
            raise ValueError(f"k must be positive, got {self.k}")
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {self.threshold}")
        if self.max_new_tokens <= 0 or self.batch_size <= 0:
            raise ValueError(f"max_new_tokens and batch_size must be positive, got "
                             f"{self.max_new_tokens} and {self.batch_size}")


def default_rag_settings(profile, **overrides) -> RagSettings:
    """Settings measured to work for the profile's generator.

    full (DeepSeek-R1-Distill-Qwen-7B): three sources and the instructions in the user
    message, as DeepSeek advises for R1 models; batches of 8 long reasoning outputs.
    tiny (SmolLM2-135M): one source (two or more confuse it: token F1 fell by more than half
    on the mini test split), the instructions as a system message, and the whole test split
    in one batch (on 2 CPU cores about 1.5x faster than batches of 8). Answer length:
    profile.rag_max_new_tokens. Overrides that are None keep the default.
    """
    tiny = profile.name == "tiny"
    values = dict(k=1 if tiny else 3, system_prompt=tiny, batch_size=64 if tiny else 8,
                  max_new_tokens=profile.rag_max_new_tokens)
    values.update({key: value for key, value in overrides.items() if value is not None})
    return RagSettings(**values)


class RAGState(TypedDict, total=False):
    query: str                  # the user's question (input)
    context: list[dict]         # retrieved passages: id, text, url, score (best first)
    answer: str                 # shown to the user: short answer + "Sources: ..." lines
    retrieved: bool             # True when a passage passed the threshold
    best_score: float           # cosine similarity of the best passage
    short_answer: str           # the answer alone: what evaluation scores
    sources: list[int]          # source numbers ([1] = first passage) the answer rests on
    reasoning: str              # a reasoning model's thoughts, if any


def chat_prompt(tokenizer, instruction: str, user: str, settings: RagSettings) -> str:
    """Instruction and user message through the tokenizer's chat template, assistant turn open.

    The instruction is a system message if settings.system_prompt, else the start of the user
    message (DeepSeek-R1 is meant to be used without a system prompt). A tokenizer without a
    chat template gets plain text ending in "Answer:".
    """
    if not getattr(tokenizer, "chat_template", None):
        return f"{instruction}\n\n{user}\nAnswer:"
    if settings.system_prompt:
        messages = [{"role": "system", "content": instruction}, {"role": "user", "content": user}]
    else:
        messages = [{"role": "user", "content": f"{instruction}\n\n{user}"}]
    extra = {} if settings.enable_thinking is None else {"enable_thinking": settings.enable_thinking}
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         **extra)


def format_sources(context: Sequence[dict]) -> str:
    """[1] first passage\n\n[2] second passage ..."""
    return "\n\n".join(f"[{n}] {p['text']}" for n, p in enumerate(context, start=1))


def rag_prompt(tokenizer, question: str, context: Sequence[dict],
               settings: RagSettings = RagSettings()) -> str:
    """Instruction, numbered sources and question, through the chat template."""
    user = f"Sources:\n{format_sources(context)}\n\nQuestion: {question}"
    return chat_prompt(tokenizer, RAG_INSTRUCTION, user, settings)


def closed_book_prompt(tokenizer, question: str, settings: RagSettings = RagSettings()) -> str:
    """The same model without sources: only what it memorized in training can answer."""
    return chat_prompt(tokenizer, CLOSED_BOOK_INSTRUCTION, f"Question: {question}", settings)


_CITATION = re.compile(r"\s*\[(\d+(?:\s*,\s*\d+)*)\]")
_SOURCES_LINE = re.compile(r"\n?\s*\(?sources?\s*:.*$", re.IGNORECASE | re.DOTALL)


_PREAMBLE = re.compile(r"^(the )?(short )?answer( to (the|this|your) question)? is\s*:?\s*",
                       re.IGNORECASE)


def clean_answer(text: str) -> str:
    """The first line of an answer, without reasoning, a lead-in such as "The answer is:",
    a trailing "Sources:" part or quotes. Closed-book and RAG answers are cleaned alike."""
    text = _SOURCES_LINE.sub("", strip_reasoning(text))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    answer = _PREAMBLE.sub("", lines[0] if lines else "")
    if NO_ANSWER.lower().rstrip(".") in answer.lower():
        return NO_ANSWER
    return answer.strip().strip('"').strip()


def parse_answer(raw: str, n_sources: int, prompt_opens_thinking: bool = False) -> dict:
    """Split a raw model output into short_answer, cited source numbers and reasoning.

    prompt_opens_thinking: the prompt ends in <think> (DeepSeek-R1's template writes it), so
    the output is reasoning until </think>; without one, generation stopped mid-thought and
    there is no answer yet.
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


class RagPipeline:
    """The steps of the graph as plain methods, also run in batches for evaluation."""

    def __init__(self, retriever: Retriever, tokenizer, generate_fn: Generator,
                 settings: RagSettings = RagSettings()):
        self.retriever, self.tokenizer = retriever, tokenizer
        self.generate_fn, self.settings = generate_fn, settings

    @classmethod
    def create(cls, model, tokenizer, index, embedding_model, passages,
               settings: RagSettings = RagSettings(), generate_fn: Generator | None = None,
               embedding_model_name: str = "") -> RagPipeline:
        """index: a FAISS index (or a Retriever); passages: the PassageStore behind it."""
        if isinstance(index, Retriever):
            retriever = index
        else:
            if not isinstance(passages, PassageStore):
                passages = PassageStore.from_texts(passages)
            retriever = Retriever(index, embedding_model, passages, embedding_model_name)
        if generate_fn is None:
            generate_fn = model_generator(model, tokenizer, settings.max_new_tokens,
                                          settings.batch_size)
        return cls(retriever, tokenizer, generate_fn, settings)

    # --- graph nodes: each takes the state and returns the fields it changes ---
    def retrieve(self, state: RAGState) -> dict:
        found = self.retriever.retrieve(state["query"], self.settings.k)
        return self._retrieved(found)

    def _retrieved(self, found: list[RetrievedPassage]) -> dict:
        best = found[0].score if found else -1.0
        return {"context": [p.to_dict() for p in found], "best_score": best,
                "retrieved": best >= self.settings.threshold}

    def route(self, state: RAGState) -> str:
        return "generate" if state.get("retrieved") else "no_answer"

    def generate(self, state: RAGState) -> dict:
        prompt = rag_prompt(self.tokenizer, state["query"], state["context"], self.settings)
        return self._finish(self.generate_fn([prompt])[0], state["context"], prompt)

    def _finish(self, raw: str, context: list[dict], prompt: str) -> dict:
        opens = prompt.rstrip().endswith(THINK_OPEN)
        parsed = parse_answer(raw, len(context), prompt_opens_thinking=opens)
        if parsed["short_answer"] in (NO_ANSWER, ""):   # a refusal, or cut off mid-thought
            parsed["sources"] = []
        elif not parsed["sources"]:
            # the model cited nothing: show every passage it was given
            parsed["sources"] = list(range(1, len(context) + 1))
        answer = answer_with_sources(parsed["short_answer"], parsed["sources"], context)
        return {"answer": answer, **parsed}

    def no_answer(self, state: RAGState) -> dict:
        return {"answer": NO_ANSWER, "short_answer": NO_ANSWER, "sources": [], "reasoning": ""}

    # --- the same steps for many questions at once ---
    def answer_batch(self, queries: Sequence[str], progress: bool = True) -> list[RAGState]:
        """Final states for many questions: retrieval batched, then one generate per batch."""
        states: list[RAGState] = []
        for query, found in zip(queries, self.retriever.retrieve_batch(
                list(queries), self.settings.k, progress=progress), strict=True):
            states.append({"query": query, **self._retrieved(found)})
        todo = [s for s in states if self.route(s) == "generate"]
        prompts = [rag_prompt(self.tokenizer, s["query"], s["context"], self.settings)
                   for s in todo]
        outputs = self.generate_fn(prompts) if prompts else []
        for state, prompt, raw in zip(todo, prompts, outputs, strict=True):
            state.update(self._finish(raw, state["context"], prompt))
        for state in states:
            if self.route(state) == "no_answer":
                state.update(self.no_answer(state))
        return states


def answer_closed_book(generate_fn: Generator, tokenizer, questions: Sequence[str],
                       settings: RagSettings = RagSettings()) -> list[str]:
    """Short answers of the model alone, from the question only (cleaned like RAG answers)."""
    prompts = [closed_book_prompt(tokenizer, q, settings) for q in questions]
    outputs = generate_fn(prompts) if prompts else []
    return [parse_answer(raw, 0, prompt.rstrip().endswith(THINK_OPEN))["short_answer"]
            for prompt, raw in zip(prompts, outputs, strict=True)]


def model_generator(model, tokenizer, max_new_tokens: int, batch_size: int = 8,
                    progress: bool = False) -> Generator:
    """Greedy generation with course_utils.generation, reasoning left in (parse_answer cuts it)."""
    from course_utils.generation import generate_answers

    def generate(prompts: list[str]) -> list[str]:
        return generate_answers(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                batch_size=batch_size, progress=progress and len(prompts) > 1,
                                desc="Generating", remove_reasoning=False)

    return generate


def build_rag_graph(pipeline: RagPipeline):
    """The compiled LangGraph app: invoke({"query": ..., "context": [], "answer": "",
    "retrieved": False})["answer"]."""
    from langgraph.graph import END, START, StateGraph

    graph = StateGraph(RAGState)
    graph.add_node("retrieve", pipeline.retrieve)
    graph.add_node("generate", pipeline.generate)
    graph.add_node("no_answer", pipeline.no_answer)
    graph.add_edge(START, "retrieve")
    graph.add_conditional_edges("retrieve", pipeline.route,
                                {"generate": "generate", "no_answer": "no_answer"})
    graph.add_edge("generate", END)
    graph.add_edge("no_answer", END)
    return graph.compile()


def create_rag_graph(model, tokenizer, index, embedding_model, passages, *,
                     settings: RagSettings = RagSettings(), generate_fn: Generator | None = None,
                     embedding_model_name: str = ""):
    """A compiled RAG graph from its parts.

    model, tokenizer: the generator (ignored for generation when generate_fn is given).
    index: a FAISS index over unit-length passage embeddings (or a ready Retriever).
    embedding_model: the SentenceTransformer that embedded the passages.
    passages: the PassageStore behind the index (or a list of texts, in index order).
    generate_fn: prompts -> raw outputs, replacing the model (tests use a fake one).
    """
    pipeline = RagPipeline.create(model, tokenizer, index, embedding_model, passages,
                                  settings, generate_fn, embedding_model_name)
    return build_rag_graph(pipeline)


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
