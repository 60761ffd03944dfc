"""Results files: written atomically, read back, summarised; paths follow the environment."""

import json

import numpy as np
import pytest
import torch

from course_utils.paths import project_root, results_dir
from course_utils.profiles import TINY
from course_utils.results import (
    flatten,
    load_all_results,
    load_results,
    save_results,
    write_json_atomic,
)


@pytest.fixture(autouse=True)
def results_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path / "results"))


def test_save_and_load_round_trip(tmp_path):
    path = save_results("02_full_finetuning", TINY,
                        metrics={"base": {"token_f1": np.float32(0.25)}},
                        memory={"peak_mib": torch.tensor(12.5)},
                        timings={"train_seconds": 3})
    assert path == tmp_path / "results" / "tiny" / "02_full_finetuning.json"
    record = load_results("02_full_finetuning", "tiny")
    assert record["profile"] == "tiny" and record["notebook"] == "02_full_finetuning"
    assert record["metrics"]["base"]["token_f1"] == pytest.approx(0.25)
    assert record["memory"]["peak_mib"] == 12.5
    assert record["versions"]["torch"] == torch.__version__
    assert record["profile_settings"]["test_size"] == TINY.test_size
    assert list(load_all_results("tiny")) == ["02_full_finetuning"]


def test_unknown_section_is_rejected():
    with pytest.raises(ValueError, match="unknown results sections"):
        save_results("00_setup_check", TINY, scores={"a": 1})


def test_missing_results_say_which_notebook_to_run():
    with pytest.raises(FileNotFoundError, match="notebooks/03_lora.ipynb"):
        load_results("03_lora", "tiny")


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    write_json_atomic(target, {"ok": 1})

    def crash_halfway(data, handle, **kwargs):
        handle.write('{"half": ')
        raise KeyboardInterrupt  # e.g. the kernel is stopped mid-write

    monkeypatch.setattr(json, "dump", crash_halfway)
    with pytest.raises(KeyboardInterrupt):
        write_json_atomic(target, {"new": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


def test_project_root_and_default_results_dir(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    monkeypatch.delenv("COURSE_RESULTS_DIR")
    assert project_root() == tmp_path
    assert results_dir("tiny") == tmp_path / "results" / "tiny"
