"""A notebook run before the notebooks whose results it reads says which to run first.

Notebook 06 reads the records of 02-05 and notebook 05 shows those of 02-04 next to its own;
no other notebook reads another's results (tests/browser/test_jupyterlab.py runs 05 alone).
"""

from pathlib import Path

import nbformat

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
READS = {"05_rag": ["02_full_finetuning", "03_lora", "04_qlora"],
         "06_comparison": ["02_full_finetuning", "03_lora", "04_qlora", "05_rag"]}


def test_only_05_and_06_read_other_notebooks_records():
    """The table above is complete: only 05 names other notebooks' results in its code, and
    06 reads the notebooks that collect_records compares (if this fails, give the new reader a
    message and a test like the one below)."""
    from course_utils.results import FINETUNE_NOTEBOOKS, RAG_NOTEBOOK

    stems = [p.stem for p in sorted(NOTEBOOKS.glob("*.ipynb"))]
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells
                         if c.cell_type == "code")
        named = [s for s in stems if s != path.stem and f'"{s}"' in code]
        if path.stem != "06_comparison":
            assert named == READS.get(path.stem, []), (path.name, named)
    assert [*FINETUNE_NOTEBOOKS, RAG_NOTEBOOK] == READS["06_comparison"]


def test_06_first_names_every_notebook_to_run(tmp_path, monkeypatch):
    """Notebook 06 with no results at all runs to the end and lists 02-05 with how to run them."""
    import papermill

    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path / "results"))
    papermill.execute_notebook(str(NOTEBOOKS / "06_comparison.ipynb"), str(tmp_path / "06.ipynb"),
                               parameters={"PROFILE": "tiny"}, kernel_name="python3",
                               cwd=str(NOTEBOOKS), progress_bar=False)
    outputs = [o for c in nbformat.read(tmp_path / "06.ipynb", 4).cells
               for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "No results yet in the tiny profile. Run first:" in text
    for stem in READS["06_comparison"]:
        assert f"- {stem}: run notebooks/{stem}.ipynb in the tiny profile" in text
