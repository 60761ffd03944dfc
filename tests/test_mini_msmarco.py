"""The mini MS MARCO: the shipped files (what the notebooks read) and the builder's rules."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from course_tools import mini_msmarco as mm
from course_utils.data import MINI_DIR

ROOT = Path(__file__).resolve().parents[1]

SCHEMA_KEYS = ["answers", "passages", "query", "query_id", "query_type", "wellFormedAnswers"]
PASSAGE_KEYS = ["is_selected", "passage_text", "url"]


# ---------------------------------------------------------------- the shipped files

@pytest.fixture(scope="module")
def shipped():
    splits = {}
    for name in mm.SPLITS:
        path = mm.DATA_DIR / f"{name}.jsonl"
        if not path.is_file():
            pytest.fail(f"{path} is missing: run `python -m course_tools.mini_msmarco build`")
        splits[name] = [json.loads(line) for line in path.read_text().splitlines()]
    return splits


def all_rows(shipped):
    return [row for rows in shipped.values() for row in rows]


def test_every_row_has_the_ms_marco_schema(shipped):
    for row in all_rows(shipped):
        assert list(row) == SCHEMA_KEYS
        assert list(row["passages"]) == PASSAGE_KEYS
        assert isinstance(row["query"], str) and row["query"].strip()
        assert isinstance(row["query_id"], int)
        assert isinstance(row["query_type"], str)
        assert len(row["answers"]) == 1 and isinstance(row["answers"][0], str)
        assert all(isinstance(a, str) for a in row["wellFormedAnswers"])
        lengths = {len(column) for column in row["passages"].values()}
        assert len(lengths) == 1


def test_sizes(shipped):
    rows = all_rows(shipped)
    passages = {text for row in rows for text in row["passages"]["passage_text"]}
    assert len(rows) >= 200
    assert len(passages) >= 700
    assert len(shipped["test"]) >= 40


def test_about_ten_percent_unanswerable(shipped):
    rows = all_rows(shipped)
    share = sum(row["answers"] == [mm.NO_ANSWER] for row in rows) / len(rows)
    assert 0.05 <= share <= 0.15, f"{share:.1%} unanswerable"
    assert any(row["answers"] == [mm.NO_ANSWER] for row in shipped["test"])


def test_answerable_rows_have_one_gold_passage_and_distractors(shipped):
    for row in all_rows(shipped):
        if row["answers"] == [mm.NO_ANSWER]:
            continue
        flags, texts = row["passages"]["is_selected"], row["passages"]["passage_text"]
        assert flags.count(1) == 1, row["query"]
        assert row["answers"][0].lower() in texts[flags.index(1)].lower(), row["query"]
        assert flags.count(0) >= 2, row["query"]


def test_unanswerable_rows_select_nothing(shipped):
    for row in all_rows(shipped):
        if row["answers"] == [mm.NO_ANSWER]:
            assert set(row["passages"]["is_selected"]) == {0}
            assert row["wellFormedAnswers"] == []


def test_query_types(shipped):
    assert {row["query_type"] for row in all_rows(shipped)} <= set(mm.QUERY_TYPES)


def test_splits_share_no_passage_and_no_query_id(shipped):
    texts = {name: {t for row in rows for t in row["passages"]["passage_text"]}
             for name, rows in shipped.items()}
    assert not texts["train"] & texts["test"]
    assert not texts["validation"] & texts["test"]
    assert not texts["train"] & texts["validation"]
    ids = [row["query_id"] for row in all_rows(shipped)]
    assert len(ids) == len(set(ids))
    queries = {name: {row["query"].lower() for row in rows} for name, rows in shipped.items()}
    assert not queries["train"] & queries["test"]


def test_shipped_files_equal_a_fresh_build(shipped):
    fresh = mm.fresh_build()
    for name in mm.SPLITS:
        assert (mm.DATA_DIR / f"{name}.jsonl").read_bytes() == fresh[name].encode(), (
            f"{name}.jsonl is stale: run `python -m course_tools.mini_msmarco build`")


# ---------------------------------------------------------------- the builder, on made-up source

def make_source(domains=("alpha", "beta", "gamma"), groups_per_domain=10):
    """{file name: file content} of a valid source; every third group has an unanswerable query."""
    files = {}
    for domain in domains:
        groups = []
        for g in range(groups_per_domain):
            passages = [{"id": f"{domain}-{g}-{p}", "url": f"https://x.example/{domain}/{g}/{p}",
                         "text": f"Passage {p} of group {g} in {domain} says the value is "
                                 f"code-{domain}-{g}-{p}. " + " ".join(["filler"] * 40)}
                        for p in range(3)]
            queries = [{"query": f"what is value {p} of {domain} group {g}",
                        "answer": f"code-{domain}-{g}-{p}", "passage": f"{domain}-{g}-{p}",
                        "query_type": "numeric", "well_formed": None} for p in range(3)]
            if g % 3 == 0:
                queries.append({"query": f"who wrote {domain} group {g}", "answer": mm.NO_ANSWER,
                                "passage": None, "query_type": "person", "well_formed": None})
            groups.append({"topic": f"{domain} topic {g}", "passages": passages,
                           "queries": queries})
        files[f"{domain}.json"] = {"domain": domain, "groups": groups}
    return files


def write_source(folder, files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content))
    return mm.load_source(folder)


def test_valid_made_up_source_passes(tmp_path):
    mm.validate_source(write_source(tmp_path, make_source()))


@pytest.mark.parametrize("change, message", [
    (lambda s: s["beta.json"]["groups"][1]["passages"][0].update(id="alpha-0-0"), "id used twice"),
    (lambda s: s["beta.json"]["groups"][1]["passages"][0].update(text="too short"), "2 words"),
    (lambda s: s["alpha.json"]["groups"][2]["queries"][0].update(answer="absent"),
     "is not in the text"),
    (lambda s: s["alpha.json"]["groups"][0]["queries"][3].update(answer="none"), "exactly"),
    (lambda s: s["alpha.json"]["groups"][2]["queries"][1].update(query_type="NUMERIC"),
     "not one of"),
    (lambda s: s["alpha.json"]["groups"][2]["passages"].pop(), "needs at least 3"),
    (lambda s: s["alpha.json"]["groups"][2]["queries"][0].update(passage="alpha-1-0"),
     "not one of this group's passages"),
    (lambda s: s["alpha.json"]["groups"][2]["queries"][0].update(wellformed="x"), "unknown keys"),
])
def test_each_rule_is_enforced(tmp_path, change, message):
    source = make_source()
    change(source)
    with pytest.raises(ValueError, match=message) as error:
        mm.validate_source(write_source(tmp_path, source))
    assert "json group" in str(error.value)  # names the file and the group


def test_all_problems_are_listed_at_once(tmp_path):
    source = make_source()
    source["alpha.json"]["groups"][0]["queries"][0]["query_type"] = "what"
    source["gamma.json"]["groups"][5]["passages"][1]["text"] = "short"
    with pytest.raises(ValueError) as error:
        mm.validate_source(write_source(tmp_path, source))
    assert "alpha.json group 0" in str(error.value) and "gamma.json group 5" in str(error.value)
    assert "'gamma-5-1'" in str(error.value)


def test_a_repeated_query_names_both_places(tmp_path):
    source = make_source()
    source["gamma.json"]["groups"][4]["queries"][0]["query"] = "What is value 1 of alpha group 2"
    with pytest.raises(ValueError, match=r"gamma.json group 4 .*already asked in alpha.json "
                                         r"group 2"):
        mm.validate_source(write_source(tmp_path, source))


def test_unreadable_file_is_named(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        mm.load_source(tmp_path)


def test_build_is_deterministic_and_splits_by_group(tmp_path):
    groups = write_source(tmp_path, make_source())
    first, second = mm.build_rows(groups, seed=42), mm.build_rows(copy.deepcopy(groups), seed=42)
    assert {n: mm.render_jsonl(r) for n, r in first.items()} == \
        {n: mm.render_jsonl(r) for n, r in second.items()}
    assert mm.build_rows(groups, seed=7) != first
    groups_of = {name: {url.rsplit("/", 1)[0] for row in rows for url in row["passages"]["url"]}
                 for name, rows in first.items()}  # "https://x.example/<domain>/<group>"
    assert not groups_of["train"] & groups_of["test"]
    assert not groups_of["validation"] & groups_of["test"]
    for name in mm.SPLITS:  # stratified: every domain in every split
        domains = {row["passages"]["url"][0].split("/")[3] for row in first[name]}
        assert domains == {"alpha", "beta", "gamma"}, name


def test_rows_hold_gold_passage_and_whole_group(tmp_path):
    rows = mm.build_rows(write_source(tmp_path, make_source()))
    row = next(r for rows_ in rows.values() for r in rows_ if r["query_id"] == 1)
    assert row["query"] == "what is value 0 of alpha group 0"
    assert sorted(row["passages"]["url"]) == [f"https://x.example/alpha/0/{p}" for p in range(3)]
    assert row["passages"]["passage_text"][row["passages"]["is_selected"].index(1)].startswith(
        "Passage 0 of group 0 in alpha")
    unanswerable = [r for rows_ in rows.values() for r in rows_ if r["answers"] == [mm.NO_ANSWER]]
    assert unanswerable and all(set(r["passages"]["is_selected"]) == {0} for r in unanswerable)


def test_test_split_is_topped_up_to_its_minimum(tmp_path):
    groups = write_source(tmp_path, make_source())
    rows = mm.build_rows(groups, settings=mm.SplitSettings(min_test_queries=60,
                                                           min_test_unanswerable=5))
    assert len(rows["test"]) >= 60
    assert sum(r["answers"] == [mm.NO_ANSWER] for r in rows["test"]) >= 5
    with pytest.raises(ValueError, match="source is too small"):
        mm.build_rows(groups, settings=mm.SplitSettings(min_test_queries=1000))


def test_query_ids_of_earlier_files_do_not_move(tmp_path):
    source = make_source()
    before = mm.build_rows(write_source(tmp_path / "a", source))
    source["gamma.json"]["groups"].append(copy.deepcopy(source["gamma.json"]["groups"][0]))
    extra = source["gamma.json"]["groups"][-1]
    for p in extra["passages"]:
        p["id"] += "-new"
        p["text"] += " new"
    after = mm.build_rows(write_source(tmp_path / "b", source))
    ids = lambda rows: {r["query"]: r["query_id"] for s in rows.values() for r in s  # noqa: E731
                        if "gamma" not in r["query"]}
    assert ids(before) == ids(after)


def test_cli_build_then_check(tmp_path, monkeypatch, capsys):
    write_source(tmp_path / "source", make_source())
    monkeypatch.setattr(mm, "SOURCE_DIR", tmp_path / "source")
    monkeypatch.setattr(mm, "DATA_DIR", tmp_path)
    assert mm.main(["build"]) == 0
    assert "test" in capsys.readouterr().out
    assert mm.main(["check"]) == 0
    (tmp_path / "test.jsonl").write_text("")
    assert mm.main(["check"]) == 1
    assert "differ from a fresh build" in capsys.readouterr().out


def test_the_builder_writes_where_the_loader_reads():
    assert mm.DATA_DIR == MINI_DIR


def test_the_documented_command_checks_the_shipped_files():
    done = subprocess.run([sys.executable, "-m", "course_tools.mini_msmarco", "check"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "shipped files match a fresh build" in done.stdout
    usage = subprocess.run([sys.executable, "-m", "course_tools.mini_msmarco"],
                           cwd=ROOT, capture_output=True, text=True)
    assert usage.returncode == 2
    assert "python -m course_tools.mini_msmarco build|check" in usage.stdout
