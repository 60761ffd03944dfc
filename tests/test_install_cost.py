"""README's install figures are the newest measurement's (benchmarks/install_cost.py)."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("install_cost", ROOT / "benchmarks" / "install_cost.py")
install_cost = importlib.util.module_from_spec(spec)
spec.loader.exec_module(install_cost)


def test_readme_states_the_newest_measurement():
    source = install_cost.latest_results()
    expected = install_cost.readme_text(json.loads(source.read_text()), source.relative_to(ROOT))
    assert install_cost.readme_block(ROOT / "README.md") == expected, (
        "README's install figures differ from the results: run "
        "`.venv/bin/python benchmarks/install_cost.py --readme`")


def test_the_measurement_is_complete():
    result = json.loads(install_cost.latest_results().read_text())
    assert result["command"] == "make setup" and result["minutes"] > 0
    if result["archives_bytes"] is None:
        assert result["note"], "a run without package-file counts says why"
    else:
        assert result["archives_count"] > 10 and result["archives_bytes"] > 0
        assert sum(result["archives_from"].values()) == result["archives_bytes"]
    assert all(result["disk_bytes"][k] > 0 for k in ("venv", "clone_without_venv"))


def test_archives_are_read_from_pips_log(tmp_path):
    """pip 26 logs a local file as "Processing PATH" and a download by its GET; older pips say
    "Added NAME from LOCATION to build tracker". Each file counts once."""
    wheel = tmp_path / "six-1.17.0+local-py2.py3-none-any.whl"
    wheel.write_bytes(b"x" * 1234)
    other = tmp_path / "tqdm-4.70.1-py3-none-any.whl"
    other.write_bytes(b"x" * 99)
    quoted = str(wheel).replace("+", "%2B")  # pip writes file URLs quoted
    log = (f"  Added six from file://{quoted}#sha256=ab to build tracker '/tmp/t'\n"
           f"Processing {other}\n"
           'https://files.example:443 "GET /simple/idna/ HTTP/1.1" 200 5000\n'
           'https://files.example:443 "GET /p/idna-3.7-py3-none-any.whl HTTP/1.1" 200 66123\n'
           "  Downloading idna-3.7-py3-none-any.whl (66 kB)\n"
           "  Added idna==3.7 from https://files.example/p/idna-3.7-py3-none-any.whl to build "
           "tracker '/tmp/t'\n"
           f"  Added course-utils from file://{tmp_path} to build tracker '/tmp/t'\n")
    found = install_cost.archives(log)
    assert [(a["file"], a["source"], a["bytes"]) for a in found] == [
        ("idna-3.7-py3-none-any.whl", "package index", 66_123),
        ("six-1.17.0+local-py2.py3-none-any.whl", "local mirror", 1234),
        ("tqdm-4.70.1-py3-none-any.whl", "local mirror", 99)]

