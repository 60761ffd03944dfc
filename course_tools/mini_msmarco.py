"""How is the mini MS MARCO made? Hand-written source files -> train/validation/test JSONL.

The source (course_utils/resources/mini_msmarco/source/<domain>.json, described in FORMAT.md
there) holds topic groups: a few passages on one topic and queries about them. Each query
becomes one row in the MS MARCO v1.1 schema whose passages are its gold passage (is_selected 1)
plus every other passage of its group as distractors (0), in a seeded shuffled order. Groups,
not queries, are split between train, validation and test, so no test passage is ever seen in
training. The built files stay in course_utils/resources/mini_msmarco, where
course_utils.data reads them; this builder is developer tooling and is not shipped.

    python -m course_tools.mini_msmarco build   # write the three JSONL files, print counts
    python -m course_tools.mini_msmarco check   # validate the source, compare with the files
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from course_utils.data import MINI_DIR, NO_ANSWER, SPLITS

DATA_DIR = MINI_DIR                  # the built JSONL files, read by course_utils.data
SOURCE_DIR = DATA_DIR / "source"
QUERY_TYPES = ("description", "numeric", "entity", "location", "person")
MIN_WORDS, MAX_WORDS = 35, 90
MIN_PASSAGES = 3  # one gold passage and at least two distractors
PASSAGE_KEYS = {"id", "url", "text"}
QUERY_KEYS = {"query", "answer", "passage", "query_type", "well_formed"}


@dataclass(frozen=True)
class Group:
    file: str          # source file name, e.g. "science.json"
    position: int      # index of the group in its file's "groups" list
    domain: str        # the file's "domain", used to stratify the split
    topic: str         # what the passages are about
    passages: list     # [{"id", "url", "text"}, ...] as written in the source
    queries: list      # [{"query", "answer", "passage", "query_type", "well_formed"}, ...]

    @property
    def where(self) -> str:
        return f"{self.file} group {self.position} ({self.topic!r})"


@dataclass(frozen=True)
class SplitSettings:
    test_fraction: float = 0.20       # share of each domain's groups that goes to test
    validation_fraction: float = 0.12  # share of each domain's groups that goes to validation
    min_test_queries: int = 48        # more groups move to test until it holds this many queries
    min_test_unanswerable: int = 3    # ... and this many "No Answer Present." queries

    def __post_init__(self):
        if not (0 < self.test_fraction and 0 < self.validation_fraction
                and self.test_fraction + self.validation_fraction < 1):
            raise ValueError("test_fraction and validation_fraction must be positive and sum "
                             f"to less than 1, got {self.test_fraction} and "
                             f"{self.validation_fraction}")
        if self.min_test_queries < 0 or self.min_test_unanswerable < 0:
            raise ValueError("min_test_queries and min_test_unanswerable must be >= 0")


def load_source(folder: Path | None = None) -> list[Group]:
    """Every group of every `<domain>.json` in `folder` (default: SOURCE_DIR), by file name."""
    groups, problems = [], []
    for path in sorted(Path(folder or SOURCE_DIR).glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            problems.append(f"{path.name}: not valid JSON ({error})")
            continue
        if not isinstance(data, dict) or not isinstance(data.get("domain"), str) \
                or not isinstance(data.get("groups"), list):
            problems.append(f"{path.name}: expected an object with a 'domain' string and a "
                            "'groups' list (see FORMAT.md)")
            continue
        for position, group in enumerate(data["groups"]):
            group = group if isinstance(group, dict) else {}
            groups.append(Group(path.name, position, data["domain"], group.get("topic", ""),
                                group.get("passages"), group.get("queries")))
    if problems:
        raise ValueError("The mini MS MARCO source cannot be read:\n- " + "\n- ".join(problems))
    return groups


def _passage_problems(passage, seen_ids: set, seen_texts: set) -> list[str]:
    if not isinstance(passage, dict):
        return ["a passage is not an object"]
    pid, problems = passage.get("id"), []
    if unknown := set(passage) - PASSAGE_KEYS:
        problems.append(f"passage {pid!r}: unknown keys {sorted(unknown)}")
    if not isinstance(pid, str) or not pid:
        problems.append(f"passage {pid!r}: 'id' must be a non-empty string")
    elif pid in seen_ids:
        problems.append(f"passage {pid!r}: id used twice (ids are unique across all files)")
    else:
        seen_ids.add(pid)
    if not isinstance(passage.get("url"), str) or not passage.get("url"):
        problems.append(f"passage {pid!r}: 'url' must be a non-empty string")
    text = passage.get("text")
    if not isinstance(text, str):
        return problems + [f"passage {pid!r}: 'text' must be a string"]
    if text in seen_texts:
        problems.append(f"passage {pid!r}: the same text appears twice (texts are unique)")
    seen_texts.add(text)
    if not MIN_WORDS <= len(text.split()) <= MAX_WORDS:
        problems.append(f"passage {pid!r}: {len(text.split())} words, "
                        f"needs {MIN_WORDS}-{MAX_WORDS}")
    return problems


def _query_problems(query, texts_by_id: dict, asked: dict, where: str) -> list[str]:
    if not isinstance(query, dict):
        return ["a query is not an object"]
    text, answer, passage = query.get("query"), query.get("answer"), query.get("passage")
    label, problems = f"query {text!r}", []
    if unknown := set(query) - QUERY_KEYS:
        problems.append(f"{label}: unknown keys {sorted(unknown)}")
    if not isinstance(text, str) or not text.strip():
        problems.append(f"{label}: 'query' must be a non-empty string")
    elif text.strip().lower() in asked:  # in train and test it would test memory, not reading
        problems.append(f"{label}: already asked in {asked[text.strip().lower()]}; "
                        "rephrase or drop one of the two")
    else:
        asked[text.strip().lower()] = where
    if query.get("query_type") not in QUERY_TYPES:
        problems.append(f"{label}: query_type {query.get('query_type')!r} is not one of "
                        f"{', '.join(QUERY_TYPES)}")
    well_formed = query.get("well_formed")
    if well_formed is not None and (not isinstance(well_formed, str) or not well_formed):
        problems.append(f"{label}: 'well_formed' must be null or a non-empty string")
    if not isinstance(answer, str) or not answer.strip():
        return problems + [f"{label}: 'answer' must be a non-empty string"]
    if passage is None:
        if answer != NO_ANSWER:
            problems.append(f"{label}: 'passage' is null, so the answer must be exactly "
                            f"{NO_ANSWER!r}, got {answer!r}")
        if well_formed is not None:
            problems.append(f"{label}: an unanswerable query needs 'well_formed': null")
    elif not isinstance(passage, str) or passage not in texts_by_id:
        problems.append(f"{label}: passage {passage!r} is not one of this group's passages")
    elif answer == NO_ANSWER:
        problems.append(f"{label}: answer {NO_ANSWER!r} needs 'passage': null")
    elif answer.lower() not in texts_by_id[passage].lower():
        problems.append(f"{label}: answer {answer!r} is not in the text of passage {passage!r}")
    return problems


def validate_source(groups: list[Group]) -> None:
    """Check every rule of FORMAT.md; raise one ValueError listing each problem found."""
    problems, seen_ids, seen_texts, asked = [], set(), set(), {}
    for group in groups:
        found = []
        if not isinstance(group.topic, str) or not group.topic.strip():
            found.append("'topic' must be a non-empty string")
        passages = group.passages if isinstance(group.passages, list) else []
        queries = group.queries if isinstance(group.queries, list) else []
        if len(passages) < MIN_PASSAGES:
            found.append(f"has {len(passages)} passages, needs at least {MIN_PASSAGES} "
                         "(a gold passage and two distractors)")
        if not queries:
            found.append("has no queries")
        for passage in passages:
            found += _passage_problems(passage, seen_ids, seen_texts)
        texts_by_id = {p["id"]: str(p.get("text", "")) for p in passages
                       if isinstance(p, dict) and isinstance(p.get("id"), str)}
        for query in queries:
            found += _query_problems(query, texts_by_id, asked, group.where)
        problems += [f"{group.where}: {problem}" for problem in found]
    if problems:
        raise ValueError(f"The mini MS MARCO source breaks {len(problems)} rule(s) of "
                         "FORMAT.md; fix these in the source files:\n- " + "\n- ".join(problems))


def split_groups(groups: list[Group], seed: int = 42,
                 settings: SplitSettings = SplitSettings()) -> dict[str, list[Group]]:
    """Seeded split of (validated) groups, stratified by domain.

    Each domain's groups are shuffled with the seed; the first 20 % go to test, the next 12 %
    to validation, the rest to train. Then train groups move to test, one domain at a time,
    until test holds `min_test_queries` queries and `min_test_unanswerable` unanswerable ones.
    """
    def count(members, unanswerable=False):
        return sum(q["passage"] is None or not unanswerable for g in members for q in g.queries)

    split = {name: [] for name in SPLITS}
    leftovers = {}  # domain -> its train groups in seeded order, to top up test from
    for domain in sorted({g.domain for g in groups}):
        members = sorted((g for g in groups if g.domain == domain), key=lambda g: g.position)
        random.Random(f"{seed}:{domain}").shuffle(members)
        n_test = round(settings.test_fraction * len(members))
        n_val = round(settings.validation_fraction * len(members))
        split["test"] += members[:n_test]
        split["validation"] += members[n_test:n_test + n_val]
        leftovers[domain] = members[n_test + n_val:]
    while True:
        short_of_unanswerable = count(split["test"], True) < settings.min_test_unanswerable
        if count(split["test"]) >= settings.min_test_queries and not short_of_unanswerable:
            break
        candidates = [(d, g) for d in sorted(leftovers) for g in leftovers[d]
                      if not short_of_unanswerable or count([g], True)]
        if not candidates:
            raise ValueError(
                f"Cannot give the test split {settings.min_test_queries} queries with "
                f"{settings.min_test_unanswerable} unanswerable ones: the source is too small. "
                "Add groups and queries to the source files.")
        # the domain with the fewest test groups gives its next candidate (ties: first by name)
        domain, group = min(candidates,
                            key=lambda c: sum(g.domain == c[0] for g in split["test"]))
        leftovers[domain].remove(group)
        split["test"].append(group)
    split["train"] = [g for d in sorted(leftovers) for g in leftovers[d]]
    return {name: sorted(members, key=lambda g: (g.file, g.position))
            for name, members in split.items()}


def _row(group: Group, query: dict, query_id: int, seed: int) -> dict:
    passages = sorted(group.passages, key=lambda p: p["id"])
    random.Random(seed * 1_000_003 + query_id).shuffle(passages)
    return {  # keys in the order of MS MARCO v1.1's features
        "answers": [query["answer"]],
        "passages": {
            "is_selected": [int(p["id"] == query["passage"]) for p in passages],
            "passage_text": [p["text"] for p in passages],
            "url": [p["url"] for p in passages],
        },
        "query": query["query"],
        "query_id": query_id,
        "query_type": query["query_type"],
        "wellFormedAnswers": [query["well_formed"]] if query.get("well_formed") else [],
    }


def build_rows(groups: list[Group], seed: int = 42,
               settings: SplitSettings = SplitSettings()) -> dict[str, list[dict]]:
    """MS MARCO v1.1 rows per split. query_id numbers all queries by (file, group, position)."""
    ordered = sorted(groups, key=lambda g: (g.file, g.position))
    ids, next_id = {}, 1
    for group in ordered:
        for index in range(len(group.queries)):
            ids[(group.file, group.position, index)] = next_id
            next_id += 1
    return {
        name: [_row(g, q, ids[(g.file, g.position, i)], seed)
               for g in members for i, q in enumerate(g.queries)]
        for name, members in split_groups(ordered, seed, settings).items()
    }


def render_jsonl(rows: list[dict]) -> str:
    """The exact text of a split file: one JSON object per line."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def fresh_build(groups: list[Group] | None = None, seed: int = 42) -> dict[str, str]:
    """{split: file text} exactly as `build` writes it, from validated source groups."""
    if groups is None:
        groups = load_source()
        validate_source(groups)
    return {name: render_jsonl(rows) for name, rows in build_rows(groups, seed).items()}


def _summary(texts: dict[str, str]) -> str:
    lines = []
    for name, text in texts.items():
        rows = [json.loads(line) for line in text.splitlines()]
        unanswerable = sum(r["answers"] == [NO_ANSWER] for r in rows)
        passages = {t for r in rows for t in r["passages"]["passage_text"]}
        lines.append(f"{name:>10}: {len(rows):4d} queries ({unanswerable} unanswerable), "
                     f"{len(passages)} passages")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "help"
    if command not in ("build", "check"):
        print("usage: python -m course_tools.mini_msmarco build|check")
        return 2
    try:
        texts = fresh_build()
    except ValueError as error:
        print(error)
        return 1
    if command == "build":
        for name, text in texts.items():
            (DATA_DIR / f"{name}.jsonl").write_bytes(text.encode("utf-8"))  # "\n" on every OS
        print(f"Wrote {', '.join(f'{n}.jsonl' for n in texts)} to {DATA_DIR}\n" + _summary(texts))
        return 0
    stale = [n for n, t in texts.items() if not (DATA_DIR / f"{n}.jsonl").is_file()
             or (DATA_DIR / f"{n}.jsonl").read_bytes() != t.encode("utf-8")]
    if stale:
        print(f"The shipped {', '.join(stale)} file(s) differ from a fresh build of the source. "
              "Run `python -m course_tools.mini_msmarco build` and commit the result.")
        return 1
    print("Source valid; shipped files match a fresh build.\n" + _summary(texts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
