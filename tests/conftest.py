"""Fixtures shared by the unit tests and the learning checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Questions whose answers a model can only know by training on them: (question, passage, answer)
SECRET_WORDS = [("red", "falcon"), ("blue", "marble"), ("green", "tundra"), ("black", "violin"),
                ("white", "copper"), ("pink", "lantern")]
NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
RUN_RESULTS_ENV_VAR = "COURSE_RUN_RESULTS"
# Tests generate afresh: answers read back from course_utils/answer_cache.py would skip the very
# forward passes some tests are about (tests/test_answer_cache.py turns it on for itself)
os.environ["COURSE_ANSWER_CACHE"] = "off"


@pytest.fixture(scope="session")
def secret_facts() -> list[tuple[str, str, str]]:
    """Six made-up QA facts in the course's (question, passage, answer) shape."""
    return [(f"What is the secret word of the {colour} box?", f"The {colour} box holds a note.",
             word) for colour, word in SECRET_WORDS]


def adamw_steps(model, batch: dict, steps: int, lr: float) -> list[float]:
    """Train the trainable parameters of `model` on one batch for `steps` AdamW steps;
    returns the loss of each step."""
    import torch

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="session")
def train_on_batch():
    """`adamw_steps`: a few plain optimizer steps on one batch."""
    return adamw_steps


OFFLINE = {"COURSE_PROFILE": "tiny", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "MPLBACKEND": "Agg"}


def run_tiny(notebook: str, folder: Path) -> Path:
    """Execute notebooks/<notebook>.ipynb in the tiny profile; returns the record it wrote."""
    import papermill

    with pytest.MonkeyPatch.context() as patch:
        for name, value in {**OFFLINE, "COURSE_RESULTS_DIR": str(folder / "results")}.items():
            patch.setenv(name, value)  # the kernel inherits the environment
        papermill.execute_notebook(str(NOTEBOOKS_DIR / f"{notebook}.ipynb"),
                                   str(folder / f"{notebook}.ipynb"),
                                   parameters={"PROFILE": "tiny"}, cwd=str(NOTEBOOKS_DIR),
                                   progress_bar=False)
    path = folder / "results" / "tiny" / f"{notebook}.json"
    if not path.is_file():
        raise AssertionError(f"notebooks/{notebook}.ipynb ran but wrote no {path}")
    return path


@pytest.fixture(scope="session")
def tiny_record(tmp_path_factory):
    """`tiny_record("03_lora")`: the results record of a tiny run of a notebook.

    Read from the folder $COURSE_RUN_RESULTS names (`make test` points it at the records its
    nbval stage just wrote); without it, or when that folder lacks the notebook's record, the
    notebook is run here with papermill first (minutes). Nothing depends on the order in which
    pytest collects test files.
    """
    from course_utils.results import read_record

    records = {}

    def load(notebook: str):
        if notebook not in records:
            folder = os.environ.get(RUN_RESULTS_ENV_VAR)
            path = Path(folder) / f"{notebook}.json" if folder else None
            if path is None or not path.is_file():
                path = run_tiny(notebook, tmp_path_factory.mktemp(f"run-{notebook}"))
            records[notebook] = read_record(path, "tiny")
        return records[notebook]

    return load
