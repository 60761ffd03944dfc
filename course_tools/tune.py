"""Which value of a setting is best, judged on validation questions only? One run per value.

    python -m course_tools.tune 03 LEARNING_RATE 1e-3 3e-3 1e-2 --profile tiny
    python -m course_tools.tune 05 TOP_K 1 2 3 --simplest-first

Each value runs the notebook with papermill, with that parameter and SPLIT="validation": the
notebook then scores its answers on the validation questions instead of the shared test split,
and writes its record to a scratch folder (the real results are not touched). The validation
scores decide; every value's mean, and its paired bootstrap difference from the best, go to
course_tools/tuning/<profile>/<notebook>-<PARAMETER>.json. RECIPES in course_utils/config.py
cites that file for the chosen value, and tests/test_tuning.py checks that the recipe holds it:
the test split is never used to choose anything.

Two rules choose. By default the value with the best validation mean wins. With
--simplest-first the values are listed from the simplest (cheapest, shortest prompt) up, and the
first one whose paired 95 % interval against the best contains 0 wins: a few validation
questions cannot see a smaller gap, so it is not worth paying for (the "one standard error"
rule of model selection, Hastie, Tibshirani & Friedman, The Elements of Statistical Learning,
section 7.10).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import tempfile
from pathlib import Path

from course_tools.runner import execute_notebook, find_notebooks
from course_utils.config import RESULTS_ENV_VAR, project_root
from course_utils.results import FineTuneRecord, RagRecord, read_record
from course_utils.uncertainty import paired_difference

TUNING_DIR = Path(__file__).resolve().parent / "tuning"
LOWER_IS_BETTER = {"eval_loss"}


def _parse(value: str):
    """'3e-3' -> 0.003, '2' -> 2, 'true' -> True, else the text."""
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def validation_scores(record, metric: str) -> tuple[float, list[float] | None]:
    """(mean, per-question scores or None) of the record's tuned answers on validation."""
    if metric == "eval_loss":
        if not isinstance(record, FineTuneRecord):
            raise ValueError("eval_loss is measured by notebooks that train (02-04)")
        return record.training.last_eval_loss, None
    scores = record.tuned if isinstance(record, FineTuneRecord) else (
        record.rag if isinstance(record, RagRecord) else None)
    if scores is None:
        raise ValueError(f"{record.notebook} writes no answer scores to tune on")
    return getattr(scores, metric), scores.per_question.get(metric)


def choose(runs: list[dict], metric: str, simplest_first: bool = False) -> dict:
    """The chosen run: the best mean, or (simplest_first) the first run listed whose paired
    interval against the best contains 0."""
    pick = min if metric in LOWER_IS_BETTER else max
    best = pick(runs, key=lambda run: run[metric])
    if not simplest_first:
        return best
    for run in runs:
        gap = run.get("difference_from_best")
        if run is best or (gap and gap["low"] <= 0 <= gap["high"]):
            return run
    return best


def tune(notebook: str, parameter: str, values: list, profile: str = "tiny",
         metric: str = "token_f1", extra: dict | None = None, notebooks_dir: Path | None = None,
         out_dir: Path = TUNING_DIR, simplest_first: bool = False) -> dict:
    """Run `notebook` once per value of `parameter` on validation; return and save the table."""
    if len(values) < 2:
        raise ValueError("give at least two values to choose from")
    root = project_root() or Path.cwd()
    [path] = find_notebooks(notebooks_dir or root / "notebooks", [notebook])
    runs = []
    with tempfile.TemporaryDirectory(prefix="tune-") as scratch:
        previous = os.environ.get(RESULTS_ENV_VAR)
        os.environ[RESULTS_ENV_VAR] = str(Path(scratch) / "results")
        try:
            for value in values:
                output = Path(scratch) / f"{path.stem}-{parameter}-{value}.ipynb"
                print(f"{path.stem}: {parameter} = {value} on the validation questions")
                execute_notebook(path, output, profile, progress=False,
                                 parameters={**(extra or {}), parameter: value,
                                             "SPLIT": "validation"})
                record = read_record(Path(scratch) / "results" / profile / f"{path.stem}.json",
                                     profile)
                if record.settings.get("split") != "validation":
                    raise ValueError(f"{path.name} ignored SPLIT='validation' (its record says "
                                     f"split={record.settings.get('split')!r}): it cannot be tuned")
                mean, per_question = validation_scores(record, metric)
                runs.append({"value": value, metric: mean, "per_question": per_question,
                             "n": len(per_question) if per_question else None})
        finally:
            if previous is None:
                os.environ.pop(RESULTS_ENV_VAR, None)
            else:
                os.environ[RESULTS_ENV_VAR] = previous
    pick = min if metric in LOWER_IS_BETTER else max
    best = pick(runs, key=lambda run: run[metric])
    for run in runs:
        if run["per_question"] and best["per_question"] and run is not best:
            run["difference_from_best"] = paired_difference(best["per_question"],
                                                            run["per_question"]).to_dict()
    if simplest_first and any(run["per_question"] is None for run in runs):
        raise ValueError(f"--simplest-first needs per-question scores, and {metric} has none")
    rule = ("simplest first: the first value listed whose paired 95 % interval against the best "
            "contains 0" if simplest_first else "the best validation mean")
    result = {"notebook": path.stem, "parameter": parameter, "profile": profile,
              "metric": metric, "split": "validation", "rule": rule,
              "best": best["value"], "chosen": choose(runs, metric, simplest_first)["value"],
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "fixed": extra or {}, "runs": [{k: v for k, v in run.items() if k != "per_question"}
                                             for run in runs]}
    target = out_dir / profile / f"{path.stem}-{parameter}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"written to {target}")
    return result


def table(result: dict) -> str:
    metric = result["metric"]
    lines = [f"{result['notebook']}, {result['parameter']} on validation ({metric}; chosen by "
             f"{result.get('rule', 'the best validation mean')}):"]
    for run in result["runs"]:
        mark = ("  <- chosen" if run["value"] == result["chosen"] else
                "  <- best mean" if run["value"] == result.get("best") else "")
        gap = run.get("difference_from_best")
        interval = (f"   vs best {gap['estimate']:+.3f} [{gap['low']:+.3f}, {gap['high']:+.3f}]"
                    if gap else "")
        lines.append(f"  {run['value']!s:>10}  {run[metric]:.4f}{interval}{mark}")
    return "\n".join(lines)


def chosen(notebook: str, parameter: str, profile: str = "tiny", out_dir: Path = TUNING_DIR):
    """The value a saved tuning run chose (for RECIPES' reasons and their test)."""
    path = out_dir / profile / f"{notebook}-{parameter}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no tuning run {path}: run python -m course_tools.tune")
    return json.loads(path.read_text())["chosen"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_tools.tune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook", help="notebook number or name, e.g. 03")
    parser.add_argument("parameter", help="a parameter of its parameters cell, e.g. LEARNING_RATE")
    parser.add_argument("values", nargs="+", help="values to try")
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--metric", default="token_f1",
                        help="token_f1, exact_match, bertscore_f1 or eval_loss (02-04)")
    parser.add_argument("--simplest-first", action="store_true",
                        help="values are listed simplest first; choose the first whose paired "
                             "interval against the best contains 0")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="other parameters held fixed in every run")
    args = parser.parse_args(argv)
    try:
        extra = dict(item.split("=", 1) for item in args.set)
        tune(args.notebook, args.parameter, [_parse(v) for v in args.values], args.profile,
             args.metric, {k: _parse(v) for k, v in extra.items()},
             simplest_first=args.simplest_first)
    except (ValueError, FileNotFoundError) as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
