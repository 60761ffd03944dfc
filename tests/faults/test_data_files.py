"""Data files under faults: the shipped mini MS MARCO copied and damaged — a split smaller than
its minimum, a split of repeated rows, a file cut short at a random offset, empty, in UTF-16 or
Latin-1, with a byte-order mark, and non-ASCII text.

Every refusal names the file and what to do; damage that leaves enough good rows is skipped
with a warning that names the file (and the lines), and the good rows load as before.
"""

import json
import shutil
import warnings

import pytest
from fault_helpers import cut_short

from course_utils import data
from course_utils.config import MIN_SPLIT_ROWS, TINY


@pytest.fixture
def mini(tmp_path):
    """A copy of the shipped mini MS MARCO files."""
    for name in data.SPLITS:
        shutil.copy(data.MINI_DIR / f"{name}.jsonl", tmp_path / f"{name}.jsonl")
    return tmp_path


def rows(mini, split):
    return [json.loads(line) for line in (mini / f"{split}.jsonl").read_text().splitlines()]


def write(mini, split, items):
    (mini / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))


def load(mini):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = data._load_from_folder(mini, TINY)
    return loaded, [str(w.message) for w in caught]


def test_the_copy_loads_like_the_shipped_files(mini):
    loaded, _ = load(mini)
    assert loaded["test"].to_list() == data.load_msmarco(TINY)["test"].to_list()


@pytest.mark.parametrize("split, keep", [("test", TINY.test_size - 1), ("train", 10),
                                         ("validation", 3)])
def test_a_split_smaller_than_its_minimum_is_refused(mini, split, keep):
    write(mini, split, rows(mini, split)[:keep])
    with pytest.raises(ValueError) as error:
        load(mini)
    message = str(error.value)
    needed = TINY.test_size if split == "test" else MIN_SPLIT_ROWS[split]
    assert f"Split {split!r} has {keep} usable rows, fewer than the {needed} it needs" in message
    assert str(mini / f"{split}.jsonl") in message and "mini_msmarco build" in message


def test_a_split_of_repeated_rows_is_refused(mini):
    write(mini, "train", [rows(mini, "train")[0]] * 200)
    with pytest.raises(ValueError, match="'train' has 1 usable rows, fewer than the 32"), \
            pytest.warns(UserWarning, match=r"199 x a repeated row \(same query_id and query\)"):
        data._load_from_folder(mini, TINY)


def test_repeated_rows_are_skipped_when_enough_remain(mini):
    test = rows(mini, "test")
    write(mini, "test", test + test[:10])
    loaded, said = load(mini)
    assert len(set(loaded["test"]["query_id"])) == len(loaded["test"]) == TINY.test_size
    repeated = [w for w in said if "a repeated row" in w]
    assert all(str(mini / "test.jsonl") in w for w in repeated), "a warning names the file"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_file_cut_short_at_a_random_offset(mini, seed):
    """Cut in its last tenth: the cut line is named and skipped, the whole rows load."""
    path, original = mini / "test.jsonl", rows(mini, "test")
    length = cut_short(path, seed, low=0.9, high=0.99)
    whole = path.read_bytes()[:length].count(b"\n")
    loaded, said = load(mini)
    [warning] = [w for w in said if w.startswith(str(path))]
    assert f"line(s) {whole + 1} are not valid JSON" in warning and "cut short" in warning
    assert set(loaded["test"]["query_id"]) <= {r["query_id"] for r in original[:whole]}


def test_a_file_cut_short_early_is_refused(mini):
    path = mini / "test.jsonl"
    cut_short(path, seed=4, low=0.05, high=0.2)
    with pytest.raises(ValueError, match=rf"'test' has \d+ usable rows, fewer than the 40 it "
                                         rf"needs .*Check {path}"):
        load(mini)


def test_an_empty_file_is_refused(mini):
    (mini / "validation.jsonl").write_bytes(b"")
    with pytest.raises(ValueError, match=rf"'validation' has no usable rows.*{mini}"):
        load(mini)


@pytest.mark.parametrize("encoding, said", [
    ("utf-16", "is saved as UTF-16 (or UTF-32), not UTF-8"),
    ("latin-1", "is not UTF-8 text: byte 0xe9 on line 3"),
])
def test_another_encoding_is_refused_naming_file_and_line(mini, encoding, said):
    train = rows(mini, "train")
    train[2]["query"] = "café " + train[2]["query"]
    path = mini / "train.jsonl"
    path.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in train)
                     .encode(encoding))
    with pytest.raises(ValueError) as error:
        load(mini)
    assert str(path) in str(error.value) and said in str(error.value)
    assert "save it as utf-8" in str(error.value).lower()


def test_a_utf8_byte_order_mark_is_read(mini):
    before, _ = load(mini)
    path = mini / "test.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    after, said = load(mini)
    assert after["test"].to_list() == before["test"].to_list()
    assert not [w for w in said if "test.jsonl" in w]


def test_non_ascii_rows_load_intact(mini):
    test = rows(mini, "test")
    for row in test:
        row["query"] = "что " + row["query"] + " ✓"
    (mini / "test.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                             for r in test), encoding="utf-8")
    loaded, _ = load(mini)
    assert all(q.startswith("что ") and q.endswith(" ✓") for q in loaded["test"]["query"])
