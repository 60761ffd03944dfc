"""The lecture deck: slides/lecture.<lang>.md filled with a run's numbers and figures, built into an editable PPTX (python-pptx) and a PDF (LibreOffice).

    python -m course_tools.slides build [--results results/tiny] [--out slides/build] [--lang ru en]

Source format (one file per language, the same slides in the same order): slides are separated
by a line `---`; a slide starts with `key: value` lines (`layout`, `figure`, `code`), then
`# Title`, then body lines (`- bullet`, `  - sub-bullet`, plain text, markdown table rows), then
`???` and the speaker notes. `{{name}}` is a number or name taken from the results records
(`facts`), never typed; `figure: name` is a plot drawn from the records (FIGURES);
`code: 03_lora | lora_config = LoraConfig( | 9` copies 9 lines of a notebook cell, starting at
the line that holds the marker. Layouts: title, bullets, figure (text left, figure right),
wide (two lines of text, figure below), code, table, references (smaller type).

Next to each deck the builder writes lecture.<lang>.layout.json: every slide's text regions
and figure boxes in points, which tests/test_slides.py checks the rendered PDF against.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
SLIDES_DIR = ROOT / "slides"
LANGUAGES = ("ru", "en")
NOTEBOOKS = ("02_full_finetuning", "03_lora", "04_qlora", "05_rag")

# --- geometry: a 16:9 slide, in points (72 per inch) -------------------------------------------
WIDTH, HEIGHT = 960.0, 540.0
MARGIN = 36.0
TITLE_TOP, TITLE_HEIGHT = 22.0, 58.0
BODY_TOP = 92.0
FOOTER_TOP = HEIGHT - 30.0
FONT = "DejaVu Sans"
MONO = "DejaVu Sans Mono"
TITLE_PT, BODY_PT, SMALL_BODY_PT, CODE_PT, TABLE_PT, FOOTER_PT = 30, 24, 20, 14, 16, 11
CODE_SIZES = (18, 16, 14)   # the largest that fits the code box is used
REFERENCE_PT = 16
COVER_TITLE_PT = 36
MAX_BODY_LINES = 7
MAX_CODE_LINES = 18
INSET = 7.2   # text box inner margin (python-pptx's default 0.1 inch)


class SlideSourceError(ValueError):
    """A slide source the builder cannot use: says the file, the slide and what to change."""


@dataclass
class Slide:
    """One slide of a source file, before or after its placeholders are filled."""

    number: int                   # 1-based, in source order
    line: int                     # where it starts in the source file
    layout: str = "bullets"
    title: str = ""
    figure: str | None = None
    code_refs: list[str] = field(default_factory=list)
    body: list[tuple[int, str]] = field(default_factory=list)   # (level, text); level -1: no bullet
    table: list[list[str]] = field(default_factory=list)
    code: list[str] = field(default_factory=list)
    notes: str = ""


LAYOUTS = ("title", "bullets", "figure", "wide", "code", "table", "references")


def parse(path: Path) -> list[Slide]:
    """The slides of a source file."""
    text = path.read_text(encoding="utf-8")
    slides: list[Slide] = []
    blocks: list[tuple[int, list[str]]] = [(1, [])]
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() == "---":
            blocks.append((number + 1, []))
        else:
            blocks[-1][1].append(line)
    for start, lines in blocks:
        if not any(line.strip() for line in lines):
            continue
        slide = Slide(number=len(slides) + 1, line=start)
        in_notes, notes = False, []
        for offset, raw in enumerate(lines):
            where = f"{path.name}:{start + offset} (slide {slide.number})"
            line = raw.rstrip()
            if in_notes:
                notes.append(line)
            elif line.strip() == "???":
                in_notes = True
            elif not slide.title and re.match(r"^(layout|figure|code):", line):
                key, value = (part.strip() for part in line.split(":", 1))
                if key == "layout":
                    if value not in LAYOUTS:
                        raise SlideSourceError(f"{where}: unknown layout {value!r}; use one of "
                                               f"{', '.join(LAYOUTS)}")
                    slide.layout = value
                elif key == "figure":
                    slide.figure = value
                else:
                    slide.code_refs.append(value)
            elif line.startswith("# "):
                slide.title = line[2:].strip()
            elif not line.strip():
                continue
            elif not slide.title:
                raise SlideSourceError(f"{where}: text before the slide's `# Title` line; "
                                       "start every slide with its key lines and a title")
            elif line.lstrip().startswith("|"):
                cells = [c.strip() for c in line.strip().strip("|").split("|")]
                if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                    slide.table.append(cells)
            else:
                match = re.match(r"^( *)- (.*)$", line)
                if match:
                    slide.body.append((len(match.group(1)) // 2, match.group(2).strip()))
                else:
                    slide.body.append((-1, line.strip()))
        slide.notes = "\n".join(notes).strip()
        if not slide.title:
            raise SlideSourceError(f"{path.name}:{start} (slide {slide.number}): no `# Title` line")
        if slide.layout in ("figure", "wide") and not slide.figure:
            raise SlideSourceError(f"{path.name}:{start} (slide {slide.number}): layout "
                                   f"{slide.layout!r} needs a `figure: name` line")
        if slide.layout == "code" and not slide.code_refs:
            raise SlideSourceError(f"{path.name}:{start} (slide {slide.number}): layout 'code' "
                                   "needs a `code: notebook | marker | lines` line")
        if slide.layout == "table" and not slide.table:
            raise SlideSourceError(f"{path.name}:{start} (slide {slide.number}): layout 'table' "
                                   "needs markdown table rows")
        slides.append(slide)
    return slides


# --- code from the notebooks --------------------------------------------------------------------


def notebook_code(ref: str, where: str) -> list[str]:
    """`03_lora | lora_config = LoraConfig( | 9`: 9 lines of notebooks/03_lora.ipynb from the
    line holding the marker."""
    parts = [p.strip() for p in ref.split("|")]
    if len(parts) != 3 or not parts[2].isdigit():
        raise SlideSourceError(f"{where}: `code: {ref}` should read `code: notebook | marker | "
                               "number of lines`")
    stem, marker, count = parts[0], parts[1], int(parts[2])
    path = ROOT / "notebooks" / f"{stem}.ipynb"
    if not path.is_file():
        raise SlideSourceError(f"{where}: no notebook {path}")
    for cell in nbformat.read(path, as_version=4).cells:
        lines = cell.source.splitlines()
        for i, line in enumerate(lines):
            if cell.cell_type == "code" and marker in line:
                return lines[i:i + count]
    raise SlideSourceError(f"{where}: no code cell of {path.name} holds {marker!r}; the notebook "
                           "changed: update the marker in the slide source")


# --- numbers from the records --------------------------------------------------------------------


def load_records(results: Path) -> dict:
    """notebook -> record for 02-05 in a results folder (results/<profile>/)."""
    from course_utils.results import read_record

    missing = [stem for stem in NOTEBOOKS if not (results / f"{stem}.json").is_file()]
    if missing:
        raise FileNotFoundError(
            f"{results} lacks the records of {', '.join(missing)}: the deck needs notebooks "
            f"02-05 of one run. Run them (`make run`, or `python -m course_tools run --profile "
            f"{results.name}`) or pass --results with a complete folder.")
    return {stem: read_record(results / f"{stem}.json") for stem in NOTEBOOKS}


class Formatter:
    """Numbers as a language writes them: 0,42 and 12 345 in Russian, 0.42 and 12,345 in English."""

    def __init__(self, lang: str):
        self.lang = lang

    def num(self, value: float, digits: int = 2) -> str:
        text = f"{value:,.{digits}f}"
        if self.lang == "ru":
            text = text.replace(",", "\u00a0").replace(".", ",")
        return text.replace("-", "\u2212")

    def pct(self, value: float, digits: int = 1) -> str:
        return self.num(100 * value, digits) + ("\u00a0%" if self.lang == "ru" else " %")

    def interval(self, interval, digits: int = 2, signed: bool = False) -> str:
        sep = "; " if self.lang == "ru" else ", "
        estimate = self.num(interval.estimate, digits)
        if signed and interval.estimate >= 0:
            estimate = "+" + estimate
        return f"{estimate} [{self.num(interval.low, digits)}{sep}{self.num(interval.high, digits)}]"

    def word(self, key: str) -> str:
        return WORDS[self.lang][key]


WORDS = {
    "ru": {"yes": "да", "no": "нет", "shows": "есть", "not_shown": "не видна",
           "full": "полное", "lora": "LoRA", "qlora": "QLoRA"},
    "en": {"yes": "yes", "no": "no", "shows": "shown", "not_shown": "not shown",
           "full": "full", "lora": "LoRA", "qlora": "QLoRA"},
}
BIG_MODEL = "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"   # notebook 05's generator in the full profile
CHOICE_MODEL = "Qwen/Qwen3-8B"                          # the README's example for the chooser
CHOICE_GPUS = ("t4", "l4", "a100")
GIB = 1024.0


def short_model(name: str) -> str:
    return name.removeprefix("packaged:").rsplit("/", 1)[-1]


def run_date(records: dict) -> str:
    return max(r.created for r in records.values())[:10]


def seven_b_bill() -> dict:
    """method -> the estimator's MemoryEstimate for the 7B model, one row of 512 tokens, bf16
    compute, gradient checkpointing, the chooser's setup per method (course_utils/plan.py)."""
    import torch

    from course_utils.estimator import estimate_training_memory, shipped_config
    from course_utils.plan import METHOD_SETUPS

    config = shipped_config(BIG_MODEL)
    return {method: estimate_training_memory(config, method, 1, 512, dtype=torch.bfloat16,
                                             device="cuda", gradient_checkpointing=True, **setup)
            for method, setup in METHOD_SETUPS.items()}


def facts(records: dict, lang: str) -> dict[str, str]:
    """Every `{{name}}` the sources may use, formatted for `lang`, from the records, the
    estimator and the GPU plan."""
    from course_utils.estimator import ModelShape, nf4_bits_per_parameter, shipped_config
    from course_utils.plan import GPUS, choose_method, plan_course
    from course_utils.results import differences

    f = Formatter(lang)
    full, lora, qlora, rag = (records[s] for s in NOTEBOOKS)
    out: dict[str, str] = {
        "profile": full.profile, "run_date": run_date(records),
        "chat_model": short_model(full.models["chat_model"]),
        "generator": short_model(rag.models["generator"]),
        "embedder": short_model(rag.models["embedding_model"]),
        "bertscore_model": short_model(full.base.bertscore_model),
        "n_test": str(full.base.n), "corpus_size": f.num(rag.details["corpus_size"], 0),
        "k": str(rag.settings.get("k")),
        "n_answerable": str(full.base.by_group.get("answerable", {}).get("n", "")),
        "n_unanswerable": str(full.base.by_group.get("unanswerable", {}).get("n", "")),
    }
    out["base_f1"] = f.interval(full.base.interval("token_f1"))
    out["base_em"] = f.pct(full.base.exact_match)
    if rag.few_shot is not None:
        out["few_shot_f1"] = f.interval(rag.few_shot.interval("token_f1"))
    for key, record in (("full", full), ("lora", lora), ("qlora", qlora)):
        out[f"{key}_f1"] = f.interval(record.tuned.interval("token_f1"))
        out[f"{key}_em"] = f.pct(record.tuned.exact_match)
        out[f"{key}_gain"] = f.interval(record.tuned.difference(record.base, "token_f1"),
                                        signed=True)
        out[f"{key}_trainable"] = f.num(record.trainable_parameters, 0)
        out[f"{key}_share"] = f.pct(record.trainable_parameters / record.total_parameters, 2)
        out[f"{key}_steps"] = str(record.training.steps)
        out[f"{key}_sps"] = f.num(record.training.seconds_per_step or 0, 2)
        out[f"{key}_train_mib"] = f.num(record.memory.training_mib or 0, 0)
        out[f"{key}_pred_mib"] = f.num(record.memory.predicted_mib or 0, 0)
        out[f"{key}_model_mib"] = f.num(record.memory.model_mib, 0)
        out[f"{key}_loss_first"] = f.num(record.training.first_eval_loss or 0, 2)
        out[f"{key}_loss_last"] = f.num(record.training.last_eval_loss or 0, 2)
        forgetting = record.forgetting
        if forgetting:
            kl = forgetting["kl_to_base"]
            out[f"{key}_kl"] = f"{f.num(kl['estimate'], 3)} [{f.num(kl['low'], 3)}" \
                               f"{'; ' if lang == 'ru' else ', '}{f.num(kl['high'], 3)}]"
            out[f"{key}_ppl_base"] = f.num(forgetting["perplexity"]["base"], 1)
            out[f"{key}_ppl_tuned"] = f.num(forgetting["perplexity"]["tuned"], 1)
            trivia = forgetting["trivia_accuracy"]["difference"]
            out[f"{key}_trivia"] = f"{'+' if trivia['estimate'] >= 0 else ''}" \
                                   f"{f.num(100 * trivia['estimate'], 1)} п. п." if lang == "ru" \
                else f"{'+' if trivia['estimate'] >= 0 else ''}{f.num(100 * trivia['estimate'], 1)} points"
    out["lora_r"] = str(lora.details.get("lora_rank", lora.settings.get("r")))
    out["lora_alpha"] = str(lora.settings.get("lora_alpha"))
    out["lora_adapter_mib"] = f.num(lora.details["adapter_mib"], 1)
    out["lora_checkpoint_mib"] = f.num(lora.details["full_checkpoint_mib"], 0)
    out["lora_targets"] = ", ".join(lora.settings.get("target_modules") or []) \
        if isinstance(lora.settings.get("target_modules"), list) \
        else str(lora.settings.get("target_modules"))
    footprints = qlora.details.get("footprints_mib", {})
    for name in ("32bit", "16bit", "8bit", "4bit"):
        if name in footprints:
            out[f"footprint_{name}"] = f.num(footprints[name], 0)
    out["nf4_bits_dq"] = f.num(nf4_bits_per_parameter(double_quant=True), 3)
    out["nf4_bits"] = f.num(nf4_bits_per_parameter(double_quant=False), 1)
    out["rag_f1"] = f.interval(rag.rag.interval("token_f1"))
    out["closed_f1"] = f.interval(rag.closed_book.interval("token_f1"))
    out["rag_gain"] = f.interval(rag.rag.difference(rag.closed_book, "token_f1"), signed=True)
    for name, value in rag.retrieval.items():
        out[name.replace("@", "_at_")] = f.num(value, 2)
    out["rag_spq"] = f.num(rag.rag_seconds_per_query, 2)
    out["closed_spq"] = f.num(rag.closed_book_seconds_per_query, 2)
    out["no_answer_routed"] = str(rag.details.get("routed_to_no_answer", ""))
    table = differences(records)
    shown = int(table["shows a difference"].sum())
    out["differences_shown"], out["differences_total"] = str(shown), str(len(table))
    # the memory bill of the 7B model (estimator)
    bill = seven_b_bill()
    shape = ModelShape.from_config(shipped_config(BIG_MODEL))
    out["big_model"] = short_model(BIG_MODEL)
    out["big_params"] = f.num(shape.parameter_count() / 1e9, 2)
    for method, estimate in bill.items():
        out[f"bill_{method}_gib"] = f.num(estimate.total_mib / GIB, 1)
        out[f"bill_{method}_weights_gib"] = f.num(estimate.weights_mib / GIB, 1)
        out[f"bill_{method}_optimizer_gib"] = f.num(estimate.optimizer_mib / GIB, 1)
        out[f"bill_{method}_gradients_gib"] = f.num(estimate.gradients_mib / GIB, 1)
    # the method chooser and the course plan (course_utils/plan.py)
    out["choice_model"] = short_model(CHOICE_MODEL)
    for gpu in CHOICE_GPUS:
        out[f"gpu_{gpu}"] = GPUS[gpu].name
        out[f"budget_{gpu}"] = f.num(GPUS[gpu].budget_gib, 1)
        for choice in choose_method(gpu, CHOICE_MODEL):
            cell = (f"{f.word('yes')}: {choice.batch_size}\u00d7{choice.seq_len}"
                    + (" +ckpt" if choice.gradient_checkpointing else "")) if choice.fits \
                else f"{f.word('no')} ({f.num(choice.peak_gib, 0)} {'ГиБ' if lang == 'ru' else 'GiB'})"
            out[f"choice_{gpu}_{choice.method}"] = cell
    for plan in plan_course("t4"):
        key = plan.notebook[:2]
        out[f"plan_{key}_peak"] = f.num(plan.peak_gib, 1)
        out[f"plan_{key}_fits"] = f.word("yes" if plan.fits else "no")
        minutes = plan.minutes
        out[f"plan_{key}_minutes"] = f"{minutes[0]:.0f}\u2013{minutes[1]:.0f}" if minutes else "?"
    out["t4_budget"] = f.num(GPUS["t4"].budget_gib, 1)
    versions = full.versions
    for name in ("transformers", "peft", "bitsandbytes", "torch", "sentence-transformers",
                 "faiss-cpu", "langgraph", "bert-score", "accelerate", "datasets"):
        if name in versions:
            out["v_" + re.sub(r"\W", "_", name)] = versions[name]
    return out


PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")


def fill(text: str, values: dict[str, str], where: str) -> str:
    def replace(match):
        name = match.group(1)
        if name not in values:
            raise SlideSourceError(f"{where}: no value for {{{{{name}}}}} in this run's records; "
                                   f"known: {', '.join(sorted(values))}")
        return values[name]

    return PLACEHOLDER.sub(replace, text)


# --- figures --------------------------------------------------------------------------------------

LABELS = {
    "en": {
        "loss": "cross-entropy loss", "step": "optimizer step", "train": "training loss",
        "eval": "evaluation loss", "full fine-tuning": "full fine-tuning", "LoRA": "LoRA",
        "QLoRA": "QLoRA", "measured": "measured", "predicted": "predicted (estimator)",
        "training_mib": "training memory, MiB", "sps": "seconds per step",
        "token_f1": "token F1 (95 % interval)", "exact_match": "exact match (95 % interval)",
        "base model": "base model", "few-shot (05)": "few-shot prompting",
        "closed-book (05)": "closed book", "RAG (05)": "RAG",
        "difference": "token F1 difference (paired 95 % interval)",
        "kl": "forgetting: KL(base || tuned) on general prose", "gain": "learning: token F1 gain",
        "no_forgetting": "forgetting: not measured (rerun notebooks 02-04)",
        "recall": "retrieval on answerable questions", "rag_quality": "answers: token F1",
        "weights": "weights", "gradients": "gradients", "optimizer states": "optimizer states",
        "activations": "activations", "logits (loss)": "logits", "autocast copies": "16-bit copies",
        "step scratch": "step scratch", "overhead": "overhead", "gib": "GiB",
        "bill": "{model}: training memory, batch 1 × 512 tokens",
        "full": "full FT\n(fp32 + AdamW)", "lora": "LoRA r=16\n(16-bit base)",
        "qlora": "QLoRA r=16\n(NF4 + 8-bit paged AdamW)",
        "stamp": "profile {profile} · {models} · run of {date}",
        "stamp_estimator": "course estimator (course_utils/estimator.py) · {model} · {date}",
        "query": "question", "retriever": "retriever\n{embedder}\nFAISS, top-{k}",
        "augment": "augmentation\nprompt = passages\n+ question", "generator": "generator\n{generator}",
        "answer": "answer", "index": "passage index\n{corpus} passages",
        "no_answer": "no relevant passage:\n\"No Answer Present.\"",
        "vs": "{a} − {b}", "its base": "its base",
    },
    "ru": {
        "loss": "кросс-энтропия", "step": "шаг оптимизатора", "train": "обучающая выборка",
        "eval": "валидационная выборка", "full fine-tuning": "полное дообучение", "LoRA": "LoRA",
        "QLoRA": "QLoRA", "measured": "измерено", "predicted": "прогноз (оценщик)",
        "training_mib": "память обучения, МиБ", "sps": "секунд на шаг",
        "token_f1": "F1 по словам (95 % интервал)", "exact_match": "точное совпадение (95 % интервал)",
        "base model": "базовая модель", "few-shot (05)": "few-shot промпт",
        "closed-book (05)": "без контекста", "RAG (05)": "RAG",
        "difference": "разность F1 по словам (парный 95 % интервал)",
        "kl": "забывание: KL(база || дообученная) на общих текстах",
        "no_forgetting": "забывание не измерено (перезапустите ноутбуки 02-04)",
        "gain": "обучение: прирост F1 по словам",
        "recall": "поиск по вопросам с ответом", "rag_quality": "ответы: F1 по словам",
        "weights": "веса", "gradients": "градиенты", "optimizer states": "состояния оптимизатора",
        "activations": "активации", "logits (loss)": "логиты", "autocast copies": "16-битные копии",
        "step scratch": "буферы шага", "overhead": "накладные", "gib": "ГиБ",
        "bill": "{model}: память обучения, батч 1 × 512 токенов",
        "full": "полное\n(fp32 + AdamW)", "lora": "LoRA r=16\n(16-битная база)",
        "qlora": "QLoRA r=16\n(NF4 + 8-бит. paged AdamW)",
        "stamp": "профиль {profile} · {models} · запуск {date}",
        "stamp_estimator": "оценщик курса (course_utils/estimator.py) · {model} · {date}",
        "query": "вопрос", "retriever": "ретривер\n{embedder}\nFAISS, top-{k}",
        "augment": "аугментация\nпромпт = фрагменты\n+ вопрос", "generator": "генератор\n{generator}",
        "answer": "ответ", "index": "индекс фрагментов\n{corpus} шт.",
        "no_answer": "нет подходящего фрагмента:\n\"No Answer Present.\"",
        "vs": "{a} − {b}", "its base": "своя база",
    },
}


def _stamp(fig, records: dict, lang: str, text: str | None = None) -> None:
    """Profile, models and the run's date at the bottom of a figure."""
    if text is None:
        models = sorted({short_model(m) for r in records.values() for k, m in r.models.items()
                         if k != "quantization"})
        text = LABELS[lang]["stamp"].format(profile=records["02_full_finetuning"].profile,
                                            models=", ".join(models), date=run_date(records))
    fig.text(0.995, 0.005, text, ha="right", va="bottom", fontsize=8.5, color="0.35")


def _figure(size):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.family": "DejaVu Sans", "font.size": 13, "axes.titlesize": 14,
                         "axes.labelsize": 13, "legend.fontsize": 11, "xtick.labelsize": 12,
                         "ytick.labelsize": 12})
    return plt.figure(figsize=size)


def fig_loss(records, lang, size):
    from course_utils.training import series

    L = LABELS[lang]
    fig = _figure(size)
    axes = fig.subplots(1, 3, sharey=True)
    for ax, stem in zip(axes, NOTEBOOKS[:3], strict=True):
        record = records[stem]
        steps, loss = series(record.training.history, "loss")
        eval_steps, eval_loss = series(record.training.history, "eval_loss")
        ax.plot(steps, loss, color="tab:blue", label=L["train"])
        ax.plot(eval_steps, eval_loss, "o--", color="tab:orange", label=L["eval"])
        ax.set_title(L[record.method])
        ax.set_xlabel(L["step"])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(L["loss"])
    axes[0].legend(frameon=False)
    return fig


def fig_memory(records, lang, size):
    import numpy as np

    L = LABELS[lang]
    fig = _figure(size)
    left, right = fig.subplots(1, 2)
    tuned = [records[s] for s in NOTEBOOKS[:3]]
    names = [L[r.method].replace(" ", "\n", 1) for r in tuned]
    x = np.arange(len(tuned))
    left.bar(x - 0.2, [r.memory.training_mib or 0 for r in tuned], 0.4, label=L["measured"])
    left.bar(x + 0.2, [r.memory.predicted_mib or 0 for r in tuned], 0.4, label=L["predicted"],
             color="tab:gray")
    left.set_xticks(x, names)
    left.set_title(L["training_mib"])
    tallest = max(max(r.memory.training_mib or 0, r.memory.predicted_mib or 0) for r in tuned)
    left.set_ylim(0, tallest * 1.35)    # room for the legend above the bars
    left.legend(frameon=False, loc="upper right", fontsize=10)
    left.grid(axis="y", alpha=0.3)
    right.bar(x, [r.training.seconds_per_step or 0 for r in tuned], 0.5, color="tab:green")
    right.set_xticks(x, names)
    right.set_title(L["sps"])
    right.grid(axis="y", alpha=0.3)
    return fig


BILL_PARTS = ("weights", "optimizer states", "gradients", "activations", "logits (loss)",
              "autocast copies", "step scratch", "overhead")


def bill_parts(estimate) -> dict[str, float]:
    """The parts of a predicted peak that add up to it, in GiB: weights, optimizer states, the
    larger of the two phases (end of forward or optimizer step) and the overhead."""
    parts = dict.fromkeys(BILL_PARTS, 0.0)
    parts["weights"], parts["optimizer states"] = estimate.weights_mib, estimate.optimizer_mib
    if estimate.forward_mib >= estimate.gradients_mib + estimate.step_scratch_mib:
        parts["activations"], parts["logits (loss)"] = estimate.activations_mib, estimate.logits_mib
        parts["autocast copies"] = estimate.autocast_mib
        parts["gradients"] = estimate.gradients_mib if estimate.accumulating else 0.0
    else:
        parts["gradients"], parts["step scratch"] = estimate.gradients_mib, estimate.step_scratch_mib
    parts["overhead"] = estimate.overhead_mib
    return {name: value / GIB for name, value in parts.items()}


def fig_bill(records, lang, size):
    L = LABELS[lang]
    bill = {method: bill_parts(estimate) for method, estimate in seven_b_bill().items()}
    fig = _figure(size)
    ax = fig.subplots()
    bottoms = [0.0] * len(bill)
    colors = ["#4c72b0", "#c44e52", "#dd8452", "#55a868", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]
    for part, color in zip(BILL_PARTS, colors, strict=True):
        values = [parts[part] for parts in bill.values()]
        if max(values) < 0.05:
            continue
        ax.barh([L[m] for m in bill], values, left=bottoms, label=L[part], color=color)
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    for y, total in enumerate(bottoms):
        ax.text(total + 1, y, f"{Formatter(lang).num(total, 1)} {L['gib']}", va="center",
                fontsize=13)
    ax.invert_yaxis()
    ax.set_xlim(0, max(bottoms) * 1.18)
    ax.set_xlabel(L["gib"])
    ax.set_title(L["bill"].format(model=short_model(BIG_MODEL)))
    ax.legend(frameon=False, ncol=3, loc="lower right", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    _stamp(fig, records, lang, L["stamp_estimator"].format(model=BIG_MODEL,
                                                           date=_dt.date.today().isoformat()))
    return fig


def fig_comparison(records, lang, size):
    from course_utils.results import scored_rows

    L = LABELS[lang]
    fig = _figure(size)
    axes = fig.subplots(1, 2, sharey=True)
    rows = scored_rows(records)
    names = [L.get(name, name) for name in rows]
    for ax, metric in zip(axes, ("token_f1", "exact_match"), strict=True):
        intervals = [scores.interval(metric) for scores in rows.values()]
        y = range(len(intervals))
        ax.barh(list(y), [i.estimate for i in intervals],
                xerr=[[i.estimate - i.low for i in intervals], [i.high - i.estimate for i in intervals]],
                color="tab:blue", alpha=0.8, capsize=4)
        ax.set_yticks(list(y), names)
        ax.set_xlim(0, 1)
        ax.set_title(L[metric])
        ax.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()
    return fig


def _method_label(name: str, L: dict) -> str:
    for key in ("base model", "few-shot (05)", "closed-book (05)", "RAG (05)", "full fine-tuning",
                "QLoRA", "LoRA"):
        name = name.replace(key, L.get(key, key))
    return name.replace(" - ", " − ").replace("its base", L["its base"]).replace(
        "closed book (05)", L["closed-book (05)"])


def fig_differences(records, lang, size):
    from course_utils.results import differences

    L = LABELS[lang]
    table = differences(records)
    fig = _figure(size)
    ax = fig.subplots()
    y = list(range(len(table)))
    colors = ["tab:green" if shown else "tab:gray" for shown in table["shows a difference"]]
    for row, (_, item) in enumerate(table.iterrows()):
        ax.errorbar(item["difference"], row, xerr=[[item["difference"] - item["low"]],
                                                   [item["high"] - item["difference"]]],
                    fmt="o", color=colors[row], capsize=5, lw=2, markersize=7)
    ax.axvline(0, color="black", lw=1)
    ax.set_yticks(y, [_method_label(name, L) for name in table.index])
    ax.invert_yaxis()
    ax.set_xlabel(L["difference"])
    ax.grid(axis="x", alpha=0.3)
    return fig


def fig_forgetting(records, lang, size):
    """results.plot_forgetting's points, with the slides' labels in `lang`."""
    from course_utils.results import plot_forgetting

    L = LABELS[lang]
    fig = _figure(size)
    ax = plot_forgetting(records, ax=fig.subplots())
    handles, methods = ax.get_legend_handles_labels()
    ax.set_title("" if handles else L["no_forgetting"])
    if handles:
        ax.set_xlabel(L["kl"])
        ax.set_ylabel(L["gain"])
        ax.legend(handles, [L[method] for method in methods], frameon=False)
    return fig


def fig_retrieval(records, lang, size):
    L = LABELS[lang]
    rag = records["05_rag"]
    fig = _figure(size)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    names = list(rag.retrieval)
    left.bar(names, [rag.retrieval[n] for n in names], color="tab:purple")
    left.tick_params(axis="x", rotation=30)
    left.set_ylim(0, 1)
    left.set_title(L["recall"])
    left.grid(axis="y", alpha=0.3)
    rows = [("closed-book (05)", rag.closed_book), ("RAG (05)", rag.rag)]
    intervals = [scores.interval("token_f1") for _, scores in rows]
    right.bar([L[name] for name, _ in rows], [i.estimate for i in intervals],
              yerr=[[i.estimate - i.low for i in intervals], [i.high - i.estimate for i in intervals]],
              color=["tab:gray", "tab:blue"], capsize=5)
    right.set_ylim(0, 1)
    right.tick_params(axis="x", rotation=30)
    right.set_title(L["rag_quality"])
    right.grid(axis="y", alpha=0.3)
    return fig


def fig_rag_pipeline(records, lang, size):
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    L = LABELS[lang]
    rag = records["05_rag"]
    fig = _figure(size)
    fig.manual_layout = True
    ax = fig.add_axes((0, 0.04, 1, 0.96))
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 50)
    ax.axis("off")
    boxes = {
        "query": (1, 30, 12, 14, L["query"], "#dddddd"),
        "retriever": (19, 28, 22, 18, L["retriever"].format(
            embedder=short_model(rag.models["embedding_model"]), k=rag.settings.get("k")), "#c6dbef"),
        "augment": (47, 28, 22, 18, L["augment"], "#fdd0a2"),
        "generator": (75, 28, 24, 18, L["generator"].format(
            generator=short_model(rag.models["generator"])), "#c7e9c0"),
        "index": (19, 3, 22, 14, L["index"].format(corpus=rag.details["corpus_size"]), "#eeeeee"),
        "no_answer": (47, 3, 28, 14, L["no_answer"], "#f2f2f2"),
    }
    for x, y, w, h, text, color in boxes.values():
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.6", fc=color, ec="0.3"))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=13)
    for (x0, y0), (x1, y1) in (((13.8, 37), (18.2, 37)), ((41.8, 37), (46.2, 37)),
                               ((69.8, 37), (74.2, 37)), ((30, 17.8), (30, 27.2)),
                               ((38, 27.2), (50, 17.8))):
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=18,
                                     color="0.2", lw=1.5))
    return fig


FIGURES = {"loss": fig_loss, "memory": fig_memory, "bill": fig_bill, "comparison": fig_comparison,
           "differences": fig_differences, "forgetting": fig_forgetting,
           "retrieval": fig_retrieval, "rag_pipeline": fig_rag_pipeline}


def render_figure(name: str, records: dict, lang: str, size_pt: tuple[float, float],
                  path: Path, where: str) -> Path:
    """Draw FIGURES[name] at the size of its box on the slide, stamped, as a PNG."""
    import matplotlib.pyplot as plt

    if name not in FIGURES:
        raise SlideSourceError(f"{where}: unknown figure {name!r}; known: {', '.join(FIGURES)}")
    size = (size_pt[0] / 72, size_pt[1] / 72)
    fig = FIGURES[name](records, lang, size)
    if not any(t.get_position()[1] < 0.02 for t in fig.texts):
        _stamp(fig, records, lang)
    if not getattr(fig, "manual_layout", False):
        fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


# --- text layout ------------------------------------------------------------------------------------


def _font_path(mono: bool = False, bold: bool = False) -> str:
    name = "DejaVuSansMono" if mono else "DejaVuSans"
    name += "-Bold" if bold else ""
    for folder in ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/TTF",
                   "/usr/share/fonts/dejavu"):
        if (Path(folder) / f"{name}.ttf").is_file():
            return str(Path(folder) / f"{name}.ttf")
    import matplotlib

    return str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / f"{name}.ttf")


@functools.lru_cache(maxsize=16)
def _font(size: float, mono: bool, bold: bool):
    from PIL import ImageFont

    return ImageFont.truetype(_font_path(mono, bold), size=int(size * 10))


def text_width(text: str, size: float, mono: bool = False, bold: bool = False) -> float:
    """Width in points of one line set in DejaVu Sans (Mono) at `size` points."""
    return _font(size, mono, bold).getlength(text) / 10


def plain(text: str) -> str:
    """Text without the source's inline markup (`code`, **bold**)."""
    return text.replace("**", "").replace("`", "")


def wrapped_lines(text: str, width: float, size: float, bold: bool = False) -> int:
    """How many lines `text` takes in a box `width` points wide (greedy word wrap)."""
    words, lines, current = plain(text).split(), 1, ""
    for word in words:
        candidate = f"{current} {word}".strip()
        if text_width(candidate, size, bold=bold) <= width or not current:
            current = candidate
        else:
            lines, current = lines + 1, word
    return lines


@dataclass
class Box:
    kind: str          # title, body, code, table, figure, footer
    x: float
    y: float
    w: float
    h: float

    def as_list(self) -> list[float]:
        return [round(v, 1) for v in (self.x, self.y, self.w, self.h)]


def body_size(slide: Slide) -> float:
    if slide.layout == "references":
        return REFERENCE_PT
    return SMALL_BODY_PT if slide.layout in ("figure", "wide", "code", "table") else BODY_PT


def body_lines(slide: Slide, width: float) -> int:
    """Lines the body takes in a box `width` points wide."""
    size = body_size(slide)
    return sum(wrapped_lines(text, width - 2 * INSET - (0 if level < 0 else 22 + 24 * level),
                             size) for level, text in slide.body)


def paragraph_space(slide: Slide) -> float:
    """Points after each paragraph: more on slides of text only."""
    return 12.0 if slide.layout == "bullets" else 6.0


def body_height(slide: Slide, width: float) -> float:
    """Points the body needs: lines at 1.2 times the type size, space after each paragraph."""
    if not slide.body:
        return 0.0
    return (body_lines(slide, width) * body_size(slide) * 1.2
            + len(slide.body) * paragraph_space(slide) + 2 * INSET)


def layout_boxes(slide: Slide) -> dict[str, Box]:
    """Where each part of a slide goes (points)."""
    inner = WIDTH - 2 * MARGIN
    body_h = FOOTER_TOP - BODY_TOP - 6
    boxes = {"title": Box("title", MARGIN, TITLE_TOP, inner, TITLE_HEIGHT),
             "footer": Box("footer", MARGIN, FOOTER_TOP, inner, 24)}
    if slide.layout == "title":
        boxes["title"] = Box("title", MARGIN, 96, inner, 170)
        boxes["body"] = Box("body", MARGIN, 280, inner, 200)
    elif slide.layout in ("bullets", "references"):
        boxes["body"] = Box("body", MARGIN, BODY_TOP, inner, body_h)
    elif slide.layout == "figure":
        text_w = 430.0
        boxes["body"] = Box("body", MARGIN, BODY_TOP, text_w, body_h)
        boxes["figure"] = Box("figure", MARGIN + text_w + 12, BODY_TOP, inner - text_w - 12, body_h)
    elif slide.layout in ("wide", "code", "table"):
        text_h = body_height(slide, inner) + 4
        top = BODY_TOP
        if slide.body:
            boxes["body"] = Box("body", MARGIN, BODY_TOP, inner, text_h)
            top += text_h + 4
        part = "figure" if slide.layout == "wide" else slide.layout
        height = FOOTER_TOP - top - 6
        if part == "code" and slide.code:
            height = min(height, len(slide.code) * code_size(slide) * 1.2 + 2 * INSET + 8)
        boxes[part] = Box(part, MARGIN, top, inner, height)
    return boxes


def code_size(slide: Slide) -> float:
    """The largest of CODE_SIZES at which every code line fits the slide's width and all lines
    fit below the body."""
    room = FOOTER_TOP - 6 - BODY_TOP - (body_height(slide, WIDTH - 2 * MARGIN) + 8
                                        if slide.body else 0) - 2 * INSET - 8
    width = WIDTH - 2 * MARGIN - 2 * INSET
    for size in CODE_SIZES:
        if all(text_width(line, size, mono=True) <= width for line in slide.code) \
                and len(slide.code) * size * 1.2 <= room:
            return size
    return CODE_SIZES[-1]


def check_fit(slide: Slide, boxes: dict[str, Box], where: str) -> int:
    """Body lines the slide needs; raises SlideSourceError when text cannot fit its box."""
    lines = 0
    if "body" in boxes:
        box = boxes["body"]
        lines = body_lines(slide, box.w)
        limit = {"title": 3, "wide": 2, "code": 2, "table": 2}.get(slide.layout, MAX_BODY_LINES)
        if lines > limit:
            raise SlideSourceError(f"{where}: the body takes {lines} lines (at most {limit} in "
                                   f"layout {slide.layout!r}); shorten it or split the slide")
        needed = body_height(slide, box.w)
        if needed > box.h + 2:
            raise SlideSourceError(f"{where}: the body needs {needed:.0f} pt, its box is "
                                   f"{box.h:.0f} pt high; shorten it")
    if slide.layout == "code":
        if len(slide.code) > MAX_CODE_LINES:
            raise SlideSourceError(f"{where}: {len(slide.code)} code lines (at most "
                                   f"{MAX_CODE_LINES}); take fewer lines")
        if len(slide.code) * code_size(slide) * 1.2 > boxes["code"].h - 2 * INSET + 1:
            raise SlideSourceError(f"{where}: the code does not fit below the text; take fewer "
                                   "lines")
        for line in slide.code:
            if text_width(line, code_size(slide), mono=True) > boxes["code"].w - 2 * INSET:
                raise SlideSourceError(f"{where}: the code line {line.strip()!r} is too long "
                                       "for the slide")
    size, most = (COVER_TITLE_PT, 3) if slide.layout == "title" else (TITLE_PT, 1)
    if wrapped_lines(slide.title, boxes["title"].w - 2 * INSET, size, bold=True) > most:
        raise SlideSourceError(f"{where}: the title {slide.title!r} takes more than {most} "
                               "line(s); shorten it")
    return lines


def fit_code(lines: list[str], width: float) -> list[str]:
    """Notebook lines for a code box: a comment that makes a line too long is dropped."""
    out = []
    for line in lines:
        if text_width(line, CODE_PT, mono=True) > width and "  #" in line:
            line = line[:line.index("  #")].rstrip()
        out.append(line)
    while out and not out[-1].strip():
        out.pop()
    return out


# --- the PPTX -------------------------------------------------------------------------------------


def _runs(paragraph, text: str, size: float, color=None) -> None:
    """Add `text` to a paragraph: `code` in the monospace font, **bold** in bold."""
    from pptx.util import Pt

    for part in re.split(r"(`[^`]+`|\*\*[^*]+\*\*)", text):
        if not part:
            continue
        run = paragraph.add_run()
        if part.startswith("`"):
            run.text, run.font.name = part[1:-1], MONO
        elif part.startswith("**"):
            run.text, run.font.name, run.font.bold = part[2:-2], FONT, True
        else:
            run.text, run.font.name = part, FONT
        run.font.size = Pt(size)
        if color is not None:
            run.font.color.rgb = color


def _textbox(slide, box: Box, name: str):
    from pptx.enum.text import MSO_AUTO_SIZE
    from pptx.util import Pt

    shape = slide.shapes.add_textbox(Pt(box.x), Pt(box.y), Pt(box.w), Pt(box.h))
    shape.name = name
    frame = shape.text_frame
    frame.word_wrap = True
    frame.auto_size = MSO_AUTO_SIZE.NONE
    return shape, frame


def _bullet(paragraph, level: int) -> None:
    """A real bullet (a:buChar) with a hanging indent, as PowerPoint writes it."""
    from lxml import etree
    from pptx.oxml.ns import qn

    props = paragraph._p.get_or_add_pPr()
    indent = 22 + 24 * level
    props.set("marL", str(int(indent * 12700)))
    props.set("indent", str(int(-16 * 12700)))
    for tag in ("a:buNone", "a:buChar", "a:buAutoNum"):
        for old in props.findall(qn(tag)):
            props.remove(old)
    font = etree.SubElement(props, qn("a:buFont"))
    font.set("typeface", FONT)
    char = etree.SubElement(props, qn("a:buChar"))
    char.set("char", "•" if level == 0 else "–")


def build_pptx(slides: list[Slide], lang: str, records: dict, out: Path, workdir: Path,
               deck_title: str) -> dict:
    """Write the deck; returns the layout manifest (boxes per slide, in points)."""
    from pptx import Presentation
    from pptx.dml.color import RGBColor
    from pptx.enum.text import MSO_ANCHOR, PP_ALIGN
    from pptx.util import Pt

    accent, grey = RGBColor(0x1F, 0x3A, 0x68), RGBColor(0x59, 0x59, 0x59)
    prs = Presentation()
    prs.slide_width, prs.slide_height = Pt(WIDTH), Pt(HEIGHT)
    blank = prs.slide_layouts[6]
    manifest = {"language": lang, "width": WIDTH, "height": HEIGHT, "slides": []}
    total = len(slides)
    problems = []
    for slide in slides:
        try:
            check_fit(slide, layout_boxes(slide), f"lecture.{lang}.md slide {slide.number} "
                                                  f"({slide.title!r})")
        except SlideSourceError as error:
            problems.append(str(error))
    if problems:
        raise SlideSourceError("\n".join(problems))
    for slide in slides:
        where = f"lecture.{lang}.md slide {slide.number} ({slide.title!r})"
        boxes = layout_boxes(slide)
        body_lines = check_fit(slide, boxes, where)
        page = prs.slides.add_slide(blank)
        # title
        shape, frame = _textbox(page, boxes["title"], "Title")
        frame.vertical_anchor = MSO_ANCHOR.BOTTOM if slide.layout == "title" else MSO_ANCHOR.MIDDLE
        paragraph = frame.paragraphs[0]
        _runs(paragraph, slide.title, COVER_TITLE_PT if slide.layout == "title" else TITLE_PT,
              accent)
        for run in paragraph.runs:
            run.font.bold = True
        if slide.layout != "title":
            line = page.shapes.add_connector(1, Pt(MARGIN), Pt(TITLE_TOP + TITLE_HEIGHT + 4),
                                             Pt(WIDTH - MARGIN), Pt(TITLE_TOP + TITLE_HEIGHT + 4))
            line.line.color.rgb = accent
        # body
        if "body" in boxes and slide.body:
            shape, frame = _textbox(page, boxes["body"], "Body")
            size = body_size(slide)
            for i, (level, text) in enumerate(slide.body):
                paragraph = frame.paragraphs[0] if i == 0 else frame.add_paragraph()
                paragraph.space_after = Pt(paragraph_space(slide))
                if level >= 0:
                    _bullet(paragraph, level)
                if slide.layout == "title":
                    paragraph.alignment = PP_ALIGN.LEFT
                _runs(paragraph, text, size if level < 1 else size - 2,
                      grey if slide.layout == "title" else None)
        # code
        if "code" in boxes:
            shape, frame = _textbox(page, boxes["code"], "Code")
            shape.fill.solid()
            shape.fill.fore_color.rgb = RGBColor(0xF4, 0xF6, 0xF8)
            frame.word_wrap = False
            for i, text in enumerate(slide.code):
                paragraph = frame.paragraphs[0] if i == 0 else frame.add_paragraph()
                run = paragraph.add_run()
                run.text, run.font.name, run.font.size = text or " ", MONO, Pt(code_size(slide))
        # table
        if "table" in boxes:
            box = boxes["table"]
            rows, cols = len(slide.table), max(len(r) for r in slide.table)
            row_h = TABLE_PT * 2.0
            graphic = page.shapes.add_table(rows, cols, Pt(box.x), Pt(box.y), Pt(box.w),
                                            Pt(row_h * rows))
            for r, cells in enumerate(slide.table):
                graphic.table.rows[r].height = Pt(row_h)
                for c in range(cols):
                    cell = graphic.table.cell(r, c)
                    cell.text_frame.paragraphs[0].text = ""
                    _runs(cell.text_frame.paragraphs[0], cells[c] if c < len(cells) else "",
                          TABLE_PT)
                    cell.margin_top = cell.margin_bottom = Pt(3)
            if row_h * rows > box.h:
                raise SlideSourceError(f"{where}: the table's {rows} rows do not fit")
        # figure
        if "figure" in boxes:
            box = boxes["figure"]
            image = render_figure(slide.figure, records, lang, (box.w, box.h),
                                  workdir / f"{lang}-{slide.number:02d}-{slide.figure}.png", where)
            picture = page.shapes.add_picture(str(image), Pt(box.x), Pt(box.y), Pt(box.w), Pt(box.h))
            picture.name = f"Figure {slide.figure}"
        # footer: the deck and the page
        shape, frame = _textbox(page, boxes["footer"], "Footer")
        paragraph = frame.paragraphs[0]
        paragraph.alignment = PP_ALIGN.RIGHT
        _runs(paragraph, f"{deck_title}  ·  {slide.number} / {total}", FOOTER_PT, grey)
        if slide.notes:
            page.notes_slide.notes_text_frame.text = slide.notes
        manifest["slides"].append({
            "number": slide.number, "title": slide.title, "layout": slide.layout,
            "figure": slide.figure, "body_lines": body_lines, "notes": bool(slide.notes),
            "boxes": {name: box.as_list() for name, box in boxes.items()}})
    prs.save(out)
    return manifest


# --- the whole build -----------------------------------------------------------------------------


def prepare(lang: str, values: dict[str, str], source: Path) -> list[Slide]:
    """The slides of one language with placeholders filled and code copied from the notebooks."""
    slides = parse(source)
    for slide in slides:
        where = f"{source.name} slide {slide.number} ({slide.title!r})"
        slide.title = fill(slide.title, values, where)
        slide.body = [(level, fill(text, values, where)) for level, text in slide.body]
        slide.table = [[fill(cell, values, where) for cell in row] for row in slide.table]
        slide.notes = fill(slide.notes, values, where)
        if slide.layout != "title" and not slide.notes:
            raise SlideSourceError(f"{where}: no speaker notes; add them after a `???` line")
        if slide.code_refs:
            code: list[str] = []
            for ref in slide.code_refs:
                code += ([""] if code else []) + notebook_code(ref, where)
            slide.code = fit_code(code, WIDTH - 2 * MARGIN - 2 * INSET)
    return slides


def soffice() -> str | None:
    return shutil.which("soffice") or shutil.which("libreoffice")


def to_pdf(pptx_files: list[Path], out: Path) -> list[Path]:
    """Convert with LibreOffice headless, in a private profile folder (no clash with a desktop
    LibreOffice or a parallel build)."""
    binary = soffice()
    if binary is None:
        raise RuntimeError("LibreOffice is not installed: `make slides-deps` installs it "
                           "(Debian: apt-get install --no-install-recommends libreoffice-impress "
                           "fonts-dejavu-core)")
    with tempfile.TemporaryDirectory(prefix="lo-profile-") as profile:
        result = subprocess.run(
            [binary, f"-env:UserInstallation=file://{profile}", "--headless", "--convert-to",
             "pdf", "--outdir", str(out), *map(str, pptx_files)],
            capture_output=True, text=True, timeout=600)
    pdfs = [out / (p.stem + ".pdf") for p in pptx_files]
    missing = [p for p in pdfs if not p.is_file()]
    if result.returncode != 0 or missing:
        raise RuntimeError(f"LibreOffice did not convert {', '.join(map(str, missing)) or 'the decks'} "
                           f"(exit {result.returncode}): {result.stderr.strip()[-800:]}")
    return pdfs


DECK_TITLES = {"ru": "Адаптация LLM", "en": "Adapting LLMs"}


def build(results: Path, out: Path, languages=LANGUAGES, pdf: bool = True) -> dict[str, dict]:
    """Build lecture.<lang>.pptx (and .pdf) for each language from the records in `results`;
    returns lang -> {"pptx", "pdf", "layout"} paths."""
    records = load_records(results)
    out.mkdir(parents=True, exist_ok=True)
    built: dict[str, dict] = {}
    counts = {}
    with tempfile.TemporaryDirectory(prefix="slides-") as work:
        for lang in languages:
            source = SLIDES_DIR / f"lecture.{lang}.md"
            if not source.is_file():
                raise FileNotFoundError(f"no slide source {source} for language {lang!r}")
            slides = prepare(lang, facts(records, lang), source)
            counts[lang] = len(slides)
            pptx = out / f"lecture.{lang}.pptx"
            manifest = build_pptx(slides, lang, records, pptx, Path(work), DECK_TITLES[lang])
            manifest["results"] = str(results)
            layout = out / f"lecture.{lang}.layout.json"
            layout.write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n",
                              encoding="utf-8")
            built[lang] = {"pptx": pptx, "layout": layout}
    if len(set(counts.values())) > 1:
        raise SlideSourceError(f"the languages have different slide counts {counts}: every "
                               "source holds the same slides in the same order")
    if pdf:
        for lang, pdf_path in zip(built, to_pdf([b["pptx"] for b in built.values()], out),
                                  strict=True):
            built[lang]["pdf"] = pdf_path
    return built


def newest_results(root: Path = ROOT / "results") -> Path:
    """results/full when it holds notebooks 02-05's records, else results/tiny."""
    for profile in ("full", "tiny"):
        folder = root / profile
        if all((folder / f"{stem}.json").is_file() for stem in NOTEBOOKS):
            return folder
    raise FileNotFoundError(f"no complete results in {root}/full or {root}/tiny: run the course "
                            "first (`make run`), or pass --results with a folder holding the "
                            "records of notebooks 02-05")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_tools.slides",
                                     description="Build the lecture deck from a run's records.")
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("build", help="write lecture.<lang>.pptx and .pdf")
    command.add_argument("--results", type=Path,
                         help="a results/<profile> folder (default: results/full when complete, "
                              "else results/tiny)")
    command.add_argument("--out", type=Path, default=SLIDES_DIR / "build")
    command.add_argument("--lang", nargs="+", default=list(LANGUAGES), choices=LANGUAGES)
    command.add_argument("--no-pdf", action="store_true", help="PPTX only (no LibreOffice)")
    args = parser.parse_args(argv)
    try:
        results = args.results or newest_results()
        built = build(results, args.out, args.lang, pdf=not args.no_pdf)
    except (FileNotFoundError, SlideSourceError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for lang, paths in built.items():
        print(f"{lang}: " + ", ".join(str(p) for key, p in paths.items() if key != "layout"))
    print(f"from the records in {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
