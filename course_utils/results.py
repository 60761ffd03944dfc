"""What did a run measure, and how do the methods compare? Typed results records, the
comparison table and the plots drawn from them.

Every notebook writes one record, `results/<profile>/<notebook>.json`: a dataclass per kind of
run (setup check, language-model fine-tune, QA fine-tune, RAG, comparison), written and read
by field name, with a schema version. Summaries, the comparison and the runner read these
records; no number is typed by hand. A file that is missing, corrupt, of another schema, kind
or profile raises ResultsFileError naming the file, what is wrong and the notebook to rerun;
the comparison (collect_records) skips such a file and says why.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import re
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from course_utils.config import library_versions, results_dir
from course_utils.evaluation import SCORE_COLUMNS

SCHEMA_VERSION = 2


class ResultsFileError(ValueError):
    """A results file cannot be used: corrupt, of another schema, kind or profile."""


# --- the parts of a record ----------------------------------------------------------------------


@dataclass
class Scores:
    """Answer quality on the shared test split (course_utils.evaluation.evaluate_answers)."""

    n: int                        # questions scored
    exact_match: float            # share of answers equal to the reference after normalizing
    token_f1: float               # mean word-overlap F1
    bertscore_precision: float
    bertscore_recall: float
    bertscore_f1: float
    bertscore_rescaled: bool      # rescaled with bert-score's baseline (False: raw scores)
    bertscore_model: str          # the encoder BERTScore used
    # What produced the answers, so that rows are compared like with like (06 shows them):
    model: str = ""               # the generator, e.g. "Qwen/Qwen3-0.6B"
    context: str = ""             # what it was given: "gold passage", "retrieved passages", "none"
    weights: str = ""             # the precision of its weights: "fp32", "bf16", "nf4", ...
    bertscore_num_layers: int | None = None   # the encoder layer BERTScore compared
    # one score per test question (same order in every record of a profile), and its group
    per_question: dict[str, list[float]] = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)          # "answerable" / "unanswerable"
    by_group: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def from_evaluation(cls, scores: dict, model: str = "", context: str = "",
                        weights: str = "") -> Scores:
        """From evaluate_answers' dict, with what produced the answers."""
        names = {f.name for f in dataclasses.fields(cls)} - {"model", "context", "weights",
                                                             "per_question"}
        return cls(**{name: scores[name] for name in names if name in scores},
                   per_question=dict(scores.get("per_example", {})),
                   model=model, context=context, weights=weights)

    def interval(self, metric: str = "token_f1"):
        """The mean of a metric with its bootstrap 95 % interval (course_utils/uncertainty.py)."""
        from course_utils.uncertainty import mean_interval

        return mean_interval(self._scores(metric))

    def difference(self, other: Scores, metric: str = "token_f1", group: str | None = None):
        """self - other on the same questions, with a paired bootstrap 95 % interval; with
        `group` ("answerable" or "unanswerable") on that group's questions only."""
        from course_utils.uncertainty import paired_difference

        before, after = other._scores(metric), self._scores(metric)
        if group is not None:
            if self.groups != other.groups:
                raise ValueError("the two scores group their questions differently: they were "
                                 "not scored on the same questions in the same order")
            keep = [i for i, name in enumerate(self.groups) if name == group]
            if not keep:
                raise ValueError(f"no {group!r} questions among these scores (groups: "
                                 f"{', '.join(sorted(set(self.groups))) or 'none kept'})")
            before, after = [before[i] for i in keep], [after[i] for i in keep]
        return paired_difference(before, after)

    def _scores(self, metric: str) -> list[float]:
        if metric not in self.per_question:
            raise ValueError(f"these scores keep no per-question {metric!r} (kept: "
                             f"{', '.join(self.per_question) or 'none'}); rerun the notebook "
                             "with this course_utils version")
        return self.per_question[metric]


@dataclass
class Training:
    """What a training run measured (course_utils.training.training_summary), and its history."""

    steps: int                          # optimizer steps done
    seconds_per_step: float | None      # forward + backward + optimizer, mean
    tokens_per_second: float | None     # real (non-padding) tokens
    train_seconds: float                # sum of step times, evaluation not included
    first_eval_loss: float | None       # before the first step (or the first evaluation)
    last_eval_loss: float | None        # after the last evaluation
    history: list[dict]                 # trainer.state.log_history (with StepStats records)

    @classmethod
    def from_log_history(cls, log_history: list[dict]) -> Training:
        from course_utils.training import training_summary

        summary = training_summary(log_history)
        return cls(steps=summary["steps"], seconds_per_step=summary["seconds_per_step"],
                   tokens_per_second=summary["tokens_per_second"],
                   train_seconds=summary["train_seconds"],
                   first_eval_loss=summary["first_eval_loss"],
                   last_eval_loss=summary["last_eval_loss"], history=list(log_history))


@dataclass
class Memory:
    """Memory of a training run, in MiB."""

    device: str                         # "cuda" (allocated by PyTorch) or "cpu" (process RSS)
    model_mib: float                    # the trained model's weights (4-bit for QLoRA)
    peak_mib: float | None = None       # raw peak while training
    training_mib: float | None = None   # measured, counted like the estimate counts
    predicted_mib: float | None = None  # the estimator's predicted peak
    predicted: dict = field(default_factory=dict)   # the estimate's parts


# --- one record per kind of run ------------------------------------------------------------------


@dataclass(kw_only=True)
class Record:
    """Fields every results file has."""

    kind: ClassVar[str] = ""
    notebook: str                          # e.g. "02_full_finetuning"
    profile: str                           # the profile the run used
    models: dict[str, str]                 # role -> model id
    settings: dict[str, Any]               # the recipe and parameters the run used
    notebook_seconds: float                # wall time from setup to the record
    created: str = field(default_factory=lambda: _dt.datetime.now(
        _dt.timezone.utc).isoformat(timespec="seconds"))
    versions: dict[str, str] = field(default_factory=library_versions)


@dataclass(kw_only=True)
class SetupRecord(Record):
    """Notebook 00: the machine, one answer, one similarity."""

    kind: ClassVar[str] = "setup"
    device: str
    dtype: str
    parameters: int
    model_mib: float
    load_seconds: float
    generate_seconds: float
    answer: str
    similar_cosine: float                  # a paraphrase pair
    different_cosine: float                # an unrelated pair


@dataclass(kw_only=True)
class LanguageModelRecord(Record):
    """Notebook 01: continued pre-training, judged by held-out perplexity."""

    kind: ClassVar[str] = "language_model"
    parameters: int
    trainable_parameters: int
    perplexity_before: float
    perplexity_after: float
    training: Training
    memory: Memory
    generations: dict[str, list[str]]      # column -> texts (prompts, greedy/sampled before/after)
    forgetting: dict[str, Any] = field(default_factory=dict)   # course_utils.forgetting.report


@dataclass(kw_only=True)
class FineTuneRecord(Record):
    """Notebooks 02-04: a chat model taught MS MARCO answers, before and after."""

    kind: ClassVar[str] = "finetune"
    method: str                            # "full fine-tuning", "LoRA" or "QLoRA"
    base: Scores                           # the model the method starts from
    tuned: Scores                          # after training
    trainable_parameters: int
    total_parameters: int
    training: Training
    memory: Memory
    examples: list[dict]                   # a few questions with both answers
    details: dict[str, Any] = field(default_factory=dict)   # what only this method measures
    forgetting: dict[str, Any] = field(default_factory=dict)   # course_utils.forgetting.report

    def summary(self) -> str:
        """The lines every fine-tuning notebook's summary starts with."""
        t, m, base, tuned = self.training, self.memory, self.base, self.tuned
        lines = [
            f"{self.method[:1].upper() + self.method[1:]} of {self.models.get('chat_model', '?')}: "
            f"{self.trainable_parameters:,} of {self.total_parameters:,} parameters trained "
            f"({self.trainable_parameters / self.total_parameters:.2%}).",
            f"- {t.steps} steps at learning rate {self.settings.get('learning_rate', '?'):g}: "
            f"{t.seconds_per_step:.2f} s/step, {t.tokens_per_second:,.0f} tokens/s; evaluation "
            f"loss {t.first_eval_loss:.3f} -> {t.last_eval_loss:.3f}.",
            f"- On {tuned.n} test questions, base -> trained: exact match {base.exact_match:.1%}"
            f" -> {tuned.exact_match:.1%}, token F1 {base.token_f1:.3f} -> {tuned.token_f1:.3f}, "
            f"BERTScore F1 {base.bertscore_f1:.3f} -> {tuned.bertscore_f1:.3f}.",
            f"- Memory ({m.device}): weights {m.model_mib:,.0f} MiB; training needed "
            f"{m.training_mib:,.0f} MiB measured, {m.predicted_mib:,.0f} MiB predicted.",
            f"- The whole notebook ran in {self.notebook_seconds:.0f} s.",
        ]
        return "\n".join(lines)


@dataclass(kw_only=True)
class RagRecord(Record):
    """Notebook 05: retrieval, then closed-book and RAG answers of the same generator."""

    kind: ClassVar[str] = "rag"
    retrieval: dict[str, float]            # recall@k, MRR@10 on the answerable test questions
    closed_book: Scores
    rag: Scores
    model_mib: float                       # the generator's weights
    closed_book_seconds_per_query: float
    rag_seconds_per_query: float
    details: dict[str, Any] = field(default_factory=dict)
    # share of the answers whose thinking ran out of budget and was closed for the model
    # (course_utils.evaluation.generate_with_thinking_budget): "closed_book" of every test
    # question, "rag" of those routed to the generator. It has a default, so a record
    # without it still loads.
    forced_share: dict[str, float] = field(default_factory=dict)
    # the zero-training baseline: the chat model of 02-04, prompted with a few solved training
    # examples and the gold passage, on the same questions (None: not run)
    few_shot: Scores | None = None
    few_shot_model_mib: float | None = None    # its weights


@dataclass(kw_only=True)
class ComparisonRecord(Record):
    """Notebook 06: the comparison table, one dict per row keyed by column name."""

    kind: ClassVar[str] = "comparison"
    rows: list[dict[str, Any]]
    missing: dict[str, str]                # notebook -> how to produce its results
    # paired differences with 95 % intervals (results.differences), one dict per comparison
    differences: list[dict[str, Any]] = field(default_factory=list)


RECORD_KINDS: dict[str, type[Record]] = {cls.kind: cls for cls in (
    SetupRecord, LanguageModelRecord, FineTuneRecord, RagRecord, ComparisonRecord)}


# --- writing and reading -----------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """Plain JSON types for numpy/torch scalars, paths and dtypes; NaN becomes None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return None if value != value else value
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if hasattr(value, "item") and callable(value.item):
        try:
            return _jsonable(value.item())
        except (TypeError, ValueError):
            pass
    return str(value)


def write_json_atomic(path: Path, data: Any) -> Path:
    """Write JSON so a reader sees the old file or the new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(_jsonable(data), handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())  # on disk before it replaces the old file (power loss)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def results_path(notebook: str, profile_name: str) -> Path:
    return results_dir(profile_name) / f"{notebook}.json"


def save_record(record: Record) -> Path:
    """Write results/<profile>/<notebook>.json and return its path."""
    data = {"schema": SCHEMA_VERSION, "kind": record.kind, **dataclasses.asdict(record)}
    return write_json_atomic(results_path(record.notebook, record.profile), data)


def _dataclass_of(hint) -> type | None:
    """The dataclass a field holds: `Scores`, or `Scores` for `Scores | None`; else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    classes = [arg for arg in typing.get_args(hint) if dataclasses.is_dataclass(arg)]
    return classes[0] if len(classes) == 1 else None


def _build(cls, data: Any, where: str):
    """A dataclass from a dict, nested dataclass fields included (an optional one may be
    null); errors name the field."""
    if not isinstance(data, dict):
        raise ResultsFileError(f"{where} is {type(data).__name__}, expected an object")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    required = {f.name for f in dataclasses.fields(cls) if f.init
                and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing = sorted(required - set(data))
    if missing:
        raise ResultsFileError(f"{where} lacks the field(s) {', '.join(missing)}")
    values = {}
    for name in names & set(data):
        nested = _dataclass_of(hints[name])
        if nested is not None and not (data[name] is None and nested is not hints[name]):
            values[name] = _build(nested, data[name], f"{where}.{name}")
        else:
            values[name] = _checked(data[name], hints[name], f"{where}.{name}")
    return cls(**values)


_SIMPLE_TYPES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
                 dict: "an object", list: "a list"}


def _checked(value: Any, hint, where: str) -> Any:
    """The value of a field whose type is a plain JSON type, checked against its annotation.

    A null in a `float` field is read back as NaN: that is how _jsonable writes NaN. Other
    nulls are refused unless the field is optional.
    """
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) \
        else (hint,)
    if value is None:
        if type(None) in options or Any in options:
            return None
        if float in options:
            return float("nan")
    kinds = [typing.get_origin(option) or option for option in options]
    kinds = [kind for kind in kinds if kind in _SIMPLE_TYPES]
    if not kinds or len(kinds) < len([o for o in options if o is not type(None)]):
        return value  # Any or a type not checked here
    for kind in kinds:
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind not in (int, float) and isinstance(value, kind):
            return value
    shown = "null" if value is None else f"{type(value).__name__} {value!r:.40}"
    raise ResultsFileError(f"{where} is {shown}, expected "
                           f"{' or '.join(_SIMPLE_TYPES[kind] for kind in kinds)}")


def rerun_hint(notebook: str, profile_name: str) -> str:
    return (f"rerun notebooks/{notebook}.ipynb in the {profile_name} profile (or "
            f"`python -m course_tools run --profile {profile_name} --only {notebook[:2]}`)")


_OTHER_BOMS = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32",
               b"\xff\xfe": "UTF-16", b"\xfe\xff": "UTF-16"}


class UnreadableJSON(ValueError):
    """A JSON file's bytes are not complete UTF-8 JSON; `kind` names the problem's class."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


def _cut_short(error: json.JSONDecodeError, text: str) -> bool:
    """True when the JSON error is the end of the text arriving too early: nothing after the
    error's position but the start of a literal or a number, or a string left open."""
    rest = text[error.pos:].strip()
    if error.msg == "Extra data":
        return False
    return (error.msg.startswith("Unterminated string") or not rest
            or any(word.startswith(rest) for word in ("true", "false", "null"))
            or re.fullmatch(r"-?[0-9]*\.?[0-9]*([eE][+-]?)?[0-9]*", rest) is not None)


def decode_json_text(path: Path) -> str:
    """The text of a JSON file, or UnreadableJSON saying what is wrong with its bytes.

    UTF-8 with a byte-order mark (as some Windows editors save) is read as UTF-8; UTF-16 or
    UTF-32, other encodings, an empty file and a file cut short are refused with a reason.
    """
    raw = Path(path).read_bytes()
    for bom, encoding in _OTHER_BOMS.items():
        if raw.startswith(bom):
            raise UnreadableJSON("UnicodeError", f"is saved as {encoding}, not UTF-8 (save "
                                 f"it as UTF-8)")
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]   # a UTF-8 byte-order mark: the text after it is fine
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UnreadableJSON("UnicodeDecodeError", f"is not UTF-8 text (byte "
                             f"{raw[error.start]:#04x} at offset {error.start:,}: another "
                             f"encoding, or a damaged file)") from None
    if not text.strip():
        raise UnreadableJSON("JSONDecodeError", "is empty (the run that wrote it was "
                             "interrupted?)")
    try:
        json.loads(text)
    except json.JSONDecodeError as error:
        if _cut_short(error, text):
            raise UnreadableJSON("JSONDecodeError", f"is cut short: its JSON stops at line "
                                 f"{text.count(chr(10)) + 1} before it is complete (an "
                                 f"interrupted write or copy)") from None
        raise UnreadableJSON("JSONDecodeError", f"is not valid JSON at line {error.lineno}, "
                             f"column {error.colno}: {error.msg}") from None
    return text


def read_record(path: Path, profile_name: str | None = None,
                kind: type[Record] | None = None) -> Record:
    """The record in a results file, checked: schema, kind and (if given) profile."""
    path = Path(path)
    notebook = path.stem
    profile_name = profile_name or path.parent.name
    hint = rerun_hint(notebook, profile_name)
    try:
        data = json.loads(decode_json_text(path))
    except OSError as error:
        raise ResultsFileError(f"{path} cannot be read ({type(error).__name__}: {error}); "
                               f"{hint}") from error
    except UnreadableJSON as error:  # not UTF-8, empty, cut short or not JSON
        raise ResultsFileError(f"{path} cannot be read ({error.kind}: the file {error}); "
                               f"{hint}") from error
    if not isinstance(data, dict):
        raise ResultsFileError(f"{path} holds {type(data).__name__}, not a results record; {hint}")
    if data.get("schema") != SCHEMA_VERSION:
        raise ResultsFileError(f"{path} is of results schema {data.get('schema')!r}, this "
                               f"course_utils reads schema {SCHEMA_VERSION}; {hint}")
    cls = RECORD_KINDS.get(data.get("kind"))
    if cls is None or (kind is not None and cls is not kind):
        wanted = kind.kind if kind else "one of " + ", ".join(RECORD_KINDS)
        raise ResultsFileError(f"{path} holds a record of kind {data.get('kind')!r}, "
                               f"expected {wanted}; {hint}")
    if data.get("profile") != profile_name:
        raise ResultsFileError(f"{path} was written by the {data.get('profile')!r} profile, "
                               f"not {profile_name!r}; {hint}")
    try:
        return _build(cls, {k: v for k, v in data.items() if k not in ("schema", "kind")},
                      path.name)
    except (ResultsFileError, TypeError) as error:
        raise ResultsFileError(f"{path}: {error}; {hint}") from error


def load_record(notebook: str, profile_name: str, kind: type[Record] | None = None) -> Record:
    """The record a notebook wrote in a profile; FileNotFoundError says which notebook to run."""
    path = results_path(notebook, profile_name)
    if path.exists() and not path.is_file():
        raise ResultsFileError(f"{path} is a folder, not a results file: move it away and "
                               f"{rerun_hint(notebook, profile_name)}")
    if not path.is_file():
        raise FileNotFoundError(f"No results for {notebook} in the {profile_name} profile "
                                f"({path}). Run notebooks/{notebook}.ipynb first (or `python -m "
                                f"course_tools run --profile {profile_name} --only "
                                f"{notebook[:2]}`).")
    return read_record(path, profile_name, kind)


# --- the comparison (notebook 06) -----------------------------------------------------------------

FINETUNE_NOTEBOOKS = ("02_full_finetuning", "03_lora", "04_qlora")
RAG_NOTEBOOK = "05_rag"
BASE_ROW = "base model"
FEW_SHOT_ROW = "few-shot (05)"
QUALITY = SCORE_COLUMNS  # the answer-quality columns, named as evaluate_answers names them
COST = ("trainable_parameters", "trainable_share", "training_mib", "predicted_mib", "model_mib",
        "seconds_per_step", "tokens_per_second")
COLUMN_LABELS = {
    "exact_match": "exact match", "token_f1": "token F1", "bertscore_precision": "BERTScore P",
    "bertscore_recall": "BERTScore R", "bertscore_f1": "BERTScore F1",
    "trainable_parameters": "trainable parameters", "trainable_share": "trainable share",
    "training_mib": "training memory (MiB)", "predicted_mib": "predicted memory (MiB)",
    "model_mib": "model weights (MiB)", "seconds_per_step": "seconds per step",
    "tokens_per_second": "tokens per second"}


@dataclass
class Collected:
    """Records found for a profile, and what to run for the missing or damaged ones."""

    profile: str
    records: dict[str, Record] = field(default_factory=dict)   # notebook -> record
    missing: dict[str, str] = field(default_factory=dict)      # notebook -> how to make it
    damaged: dict[str, str] = field(default_factory=dict)      # notebook -> what is wrong

    def report(self) -> str:
        found = ", ".join(self.records) or "none"
        lines = [f"results found ({self.profile} profile): {found}"]
        lines += [f"damaged {stem}, skipped: {message}" for stem, message in self.damaged.items()]
        lines += [f"missing {stem}: {hint}" for stem, hint in self.missing.items()
                  if stem not in self.damaged]
        return "\n".join(lines)


def collect_records(profile: str, notebooks=(*FINETUNE_NOTEBOOKS, RAG_NOTEBOOK)) -> Collected:
    """Load the records of the compared notebooks; note the missing ones. A damaged file is
    skipped with its message (it names the file, what is wrong and the notebook to rerun) in
    `damaged` and in `missing`, so the comparison goes on with the others."""
    collected = Collected(profile=profile)
    for stem in notebooks:
        try:
            collected.records[stem] = load_record(stem, profile)
        except FileNotFoundError:
            collected.missing[stem] = rerun_hint(stem, profile).replace("rerun", "run", 1)
        except ResultsFileError as error:
            collected.damaged[stem] = str(error)
            collected.missing[stem] = f"its results file is damaged: {error}"
    return collected


DESCRIBE = ("model", "context", "weights")   # what produced a row's answers


def _quality(scores: Scores) -> dict:
    return {**{name: getattr(scores, name) for name in QUALITY},
            **{name: getattr(scores, name) or None for name in DESCRIBE}}


def comparison_rows(records: dict[str, Record]) -> list[dict]:
    """One row per method: quality on the shared test split and training cost.

    The first row is the base model before any training (from the first fine-tuning notebook
    found, in course order), the row every method has to beat. Next comes the same chat model
    prompted with a few solved examples ("few-shot (05)", zero training), then the methods.
    Notebook 05 adds its generator without retrieval ("closed-book") and with it ("RAG");
    they train nothing.
    """
    rows: list[dict] = []
    tuned = [records[s] for s in FINETUNE_NOTEBOOKS if isinstance(records.get(s), FineTuneRecord)]
    if tuned:
        first = tuned[0]
        rows.append({"method": BASE_ROW, "notebook": first.notebook, **_quality(first.base),
                     "model_mib": first.memory.model_mib})
    rag = records.get(RAG_NOTEBOOK)
    if isinstance(rag, RagRecord) and rag.few_shot is not None:
        rows.append({"method": FEW_SHOT_ROW, "notebook": rag.notebook, **_quality(rag.few_shot),
                     "trainable_parameters": 0,
                     "model_mib": rag.few_shot_model_mib})
    for record in tuned:
        rows.append({"method": record.method, "notebook": record.notebook,
                     **_quality(record.tuned),
                     "trainable_parameters": record.trainable_parameters,
                     "trainable_share": record.trainable_parameters / record.total_parameters,
                     "training_mib": record.memory.training_mib,
                     "predicted_mib": record.memory.predicted_mib,
                     "model_mib": record.memory.model_mib,
                     "seconds_per_step": record.training.seconds_per_step,
                     "tokens_per_second": record.training.tokens_per_second})
    if isinstance(rag, RagRecord):
        for method, scores in (("closed-book (05)", rag.closed_book), ("RAG (05)", rag.rag)):
            rows.append({"method": method, "notebook": rag.notebook, **_quality(scores),
                         "trainable_parameters": 0, "model_mib": rag.model_mib})
    if not rows:
        raise ValueError("no results to compare: run notebooks 02-05 first "
                         "(`python -m course_tools run --profile tiny`)")
    return [{c: row.get(c) for c in ("method", "notebook", *DESCRIBE, *QUALITY, *COST)}
            for row in rows]


def comparison_table(records: dict[str, Record]):
    """comparison_rows as a pandas DataFrame indexed by method (columns: field names)."""
    import pandas as pd

    return pd.DataFrame(comparison_rows(records)).set_index("method")


def gains_over_base(records: dict[str, Record], metric: str = "token_f1"):
    """Each fine-tuning method's gain in `metric` over ITS OWN base model (QLoRA's base is
    the 4-bit model, so this separates what training added from what quantization cost)."""
    import pandas as pd

    gains = {r.method: getattr(r.tuned, metric) - getattr(r.base, metric)
             for s in FINETUNE_NOTEBOOKS if isinstance(r := records.get(s), FineTuneRecord)}
    return pd.Series(gains, name=f"{COLUMN_LABELS.get(metric, metric)} gain over its base",
                     dtype=float)


def scored_rows(records: dict[str, Record]) -> dict[str, Scores]:
    """method -> the Scores of its row in the comparison (base model first)."""
    rows: dict[str, Scores] = {}
    tuned = [records[s] for s in FINETUNE_NOTEBOOKS if isinstance(records.get(s), FineTuneRecord)]
    if tuned:
        rows[BASE_ROW] = tuned[0].base
    rag = records.get(RAG_NOTEBOOK)
    if isinstance(rag, RagRecord) and rag.few_shot is not None:
        rows[FEW_SHOT_ROW] = rag.few_shot
    for record in tuned:
        rows[record.method] = record.tuned
    if isinstance(rag, RagRecord):
        rows["closed-book (05)"], rows["RAG (05)"] = rag.closed_book, rag.rag
    return rows


def differences(records: dict[str, Record], metric: str = "token_f1"):
    """Paired differences with 95 % bootstrap intervals, on the shared test questions:
    every method against its own base, few-shot prompting against the base model it prompts,
    RAG against closed book, and the methods against each other. Rows whose records keep no
    per-question scores are left out."""
    import pandas as pd

    pairs = []
    for stem in FINETUNE_NOTEBOOKS:
        record = records.get(stem)
        if isinstance(record, FineTuneRecord):
            pairs.append((f"{record.method} - its base", record.tuned, record.base))
    rag = records.get(RAG_NOTEBOOK)
    tuned = [records[s] for s in FINETUNE_NOTEBOOKS if isinstance(records.get(s), FineTuneRecord)]
    if isinstance(rag, RagRecord) and rag.few_shot is not None and tuned \
            and (rag.few_shot.model == tuned[0].base.model
                 or "" in (rag.few_shot.model, tuned[0].base.model)):   # the same model
        pairs.append((f"{FEW_SHOT_ROW} - {BASE_ROW}", rag.few_shot, tuned[0].base))
    if isinstance(rag, RagRecord):
        pairs.append(("RAG - closed book (05)", rag.rag, rag.closed_book))
    for i, first in enumerate(tuned):
        for second in tuned[i + 1:]:
            pairs.append((f"{first.method} - {second.method}", first.tuned, second.tuned))
    rows = []
    for name, after, before in pairs:
        if metric not in after.per_question or metric not in before.per_question \
                or len(after.per_question[metric]) != len(before.per_question[metric]):
            continue
        interval = after.difference(before, metric)
        rows.append({"comparison": name, "difference": interval.estimate,
                     "low": interval.low, "high": interval.high, "n": interval.n,
                     "shows a difference": interval.excludes_zero})
    return pd.DataFrame(rows, columns=["comparison", "difference", "low", "high", "n",
                                       "shows a difference"]).set_index("comparison")


def by_group_table(records: dict[str, Record], metric: str = "token_f1"):
    """Every row's mean `metric` on answerable and unanswerable questions and overall."""
    import pandas as pd

    table = {}
    for method, scores in scored_rows(records).items():
        groups = {group: values.get(metric) for group, values in scores.by_group.items()}
        table[method] = {**groups, "all": getattr(scores, metric)}
        table[method].update({f"n {g}": v.get("n") for g, v in scores.by_group.items()})
    return pd.DataFrame(table).T


def forgetting_table(records: dict[str, Record]):
    """Task gain (token F1 over the base) against forgetting, per fine-tuning method."""
    import pandas as pd

    rows = {}
    for stem in FINETUNE_NOTEBOOKS:
        record = records.get(stem)
        if not isinstance(record, FineTuneRecord) or not record.forgetting:
            continue
        f = record.forgetting
        rows[record.method] = {
            "token F1 gain": record.tuned.token_f1 - record.base.token_f1,
            "KL to base": f["kl_to_base"]["estimate"],
            "perplexity base": f["perplexity"]["base"],
            "perplexity tuned": f["perplexity"]["tuned"],
            "trivia accuracy change": f["trivia_accuracy"]["difference"]["estimate"],
            "format bleed change": f["format_bleed"]["difference"]["estimate"]}
    return pd.DataFrame(rows).T


# --- plots ------------------------------------------------------------------------------------


def plot_loss_curves(history: list[dict], ax=None, title: str | None = None):
    """Training loss (every logged step) and evaluation loss (markers) against the step.

    history: trainer.state.log_history, or a record's training.history. Draws on `ax` when
    given, else on a new figure. Returns the Axes.
    """
    import matplotlib.pyplot as plt

    from course_utils.training import series

    train_steps, train_loss = series(history, "loss")
    eval_steps, eval_loss = series(history, "eval_loss")
    if not train_loss and not eval_loss:
        raise ValueError("the history holds no 'loss' or 'eval_loss' values to plot")
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    if train_loss:
        ax.plot(train_steps, train_loss, label="training loss", color="tab:blue", alpha=0.8)
    if eval_loss:
        ax.plot(eval_steps, eval_loss, "o--", label="evaluation loss", color="tab:orange")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss (nats per token)")
    ax.set_title(title or "Loss during training")
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def bertscore_label(records: dict[str, Record]) -> str:
    """What the BERTScore numbers are: model, layer, raw or rescaled. Rows scored differently
    cannot share an axis, so a mix raises ValueError."""
    kinds = {(s.bertscore_model, s.bertscore_num_layers, s.bertscore_rescaled)
             for s in scored_rows(records).values()}
    if len(kinds) != 1:
        raise ValueError(f"the records were scored with different BERTScore settings {kinds}; "
                         "rerun them in one profile")
    model, layer, rescaled = kinds.pop()
    where = f"layer {layer}" if layer is not None else "default layer"
    scale = "rescaled with bert-score's baseline" if rescaled else "raw, not rescaled"
    return f"BERTScore F1 ({model.removeprefix('packaged:')}, {where}, {scale})"


def quality_intervals(records: dict[str, Record], metrics=("exact_match", "token_f1",
                                                             "bertscore_f1")) -> dict:
    """method -> metric -> bootstrap Interval, for rows that keep per-question scores."""
    intervals: dict[str, dict] = {}
    for method, scores in scored_rows(records).items():
        kept = [m for m in metrics if m in scores.per_question]
        if kept:
            intervals[method] = {m: scores.interval(m) for m in kept}
    return intervals


def _error_bars(table, metrics, intervals):
    """(2, methods) arrays of distances below/above each value, per metric; None without."""
    import numpy as np

    if not intervals:
        return None
    bars = {}
    for metric in metrics:
        low, high = [], []
        for method, value in table[metric].items():
            interval = intervals.get(method, {}).get(metric)
            low.append(value - interval.low if interval else 0.0)
            high.append(interval.high - value if interval else 0.0)
        bars[metric] = np.array([low, high])
    return bars


def plot_comparison(table, bertscore: str | None = None, intervals: dict | None = None):
    """Answer quality (word overlap; BERTScore on its own axis, labelled with what produced
    it) and cost per method, with 95 % bootstrap intervals as error bars when given
    (quality_intervals). Returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(19, 8))
    overlap = ["exact_match", "token_f1"]
    bars = _error_bars(table, [*overlap, "bertscore_f1"], intervals)
    values = table[overlap].astype(float)
    ax = axes[0, 0]
    width = 0.4
    positions = range(len(values))
    for offset, metric in zip((-width / 2, width / 2), overlap, strict=True):
        ax.bar([p + offset for p in positions], values[metric], width,
               yerr=bars[metric] if bars else None, capsize=3, label=COLUMN_LABELS[metric])
    ax.set_xticks(list(positions), values.index, rotation=20)
    ax.set_ylim(0, 1.05)
    ax.set_title("answer quality: overlap with the reference")
    ax.legend(fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    ax = axes[0, 1]
    scores = table["bertscore_f1"].astype(float)
    ax.bar(scores.index, scores.values, color="tab:purple",
           yerr=bars["bertscore_f1"] if bars else None, capsize=3)
    low, high = scores.min(), scores.max()
    pad = max(0.05, (high - low) * 0.5)
    ax.set_ylim(max(-1.0, low - pad), min(1.0, high + pad))   # its own scale, never 0-1 shared
    ax.set_title(bertscore or "BERTScore F1", fontsize=9)
    ax.tick_params(axis="x", rotation=20)
    ax.grid(axis="y", alpha=0.3)
    panels = [(axes[0, 2], "trainable_parameters", True), (axes[0, 3], "training_mib", False),
              (axes[1, 0], "model_mib", False), (axes[1, 1], "seconds_per_step", False),
              (axes[1, 2], "tokens_per_second", False)]
    for ax, column, log in panels:
        values = table[column].dropna().astype(float)
        if log:
            values = values[values > 0]  # methods that train nothing have no bar on a log axis
        label = COLUMN_LABELS[column]
        if values.empty:
            ax.set_title(f"{label}: not measured")
            continue
        ax.bar(values.index, values.values, color="tab:gray" if log else "tab:blue")
        ax.set_title(label)
        ax.tick_params(axis="x", rotation=20)
        if log:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    axes[1, 3].axis("off")
    if intervals:
        axes[1, 3].text(0, 0.5, "error bars: 95 % bootstrap intervals\nover the test questions",
                        fontsize=9)
    fig.tight_layout()
    return fig


def plot_forgetting(records: dict[str, Record], ax=None):
    """Task gain (token F1 over its base, with its interval) against forgetting (mean KL of
    the next-token distributions on general prose from the base), one point per method."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    points = 0
    for stem in FINETUNE_NOTEBOOKS:
        record = records.get(stem)
        if not isinstance(record, FineTuneRecord) or not record.forgetting:
            continue
        gain = record.tuned.difference(record.base, "token_f1")
        kl = record.forgetting["kl_to_base"]
        ax.errorbar(kl["estimate"], gain.estimate,
                    xerr=[[kl["estimate"] - kl["low"]], [kl["high"] - kl["estimate"]]],
                    yerr=[[gain.estimate - gain.low], [gain.high - gain.estimate]],
                    fmt="o", capsize=3, label=record.method)
        points += 1
    if not points:
        ax.set_title("forgetting: not measured (rerun notebooks 02-04)")
        return ax
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xlabel("forgetting: mean KL(base || tuned) on general prose (nats per token)")
    ax.set_ylabel("learning: token F1 gain over its base")
    ax.set_title("learns more vs forgets more (95 % intervals)")
    ax.grid(alpha=0.3)
    ax.legend()
    return ax
