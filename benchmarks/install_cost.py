"""What does the README's first command cost on a machine with nothing cached? `make setup`, timed.

    .venv/bin/python benchmarks/install_cost.py            # measure (several minutes)
    .venv/bin/python benchmarks/install_cost.py --readme   # README's figures from the newest results

The script clones HEAD of this repository into a new temporary folder and runs `make setup`
there with an empty pip cache (PIP_CACHE_DIR set to a new empty folder, PIP_NO_CACHE_DIR
unset) and an empty model cache (HF_HOME set to a new empty folder). It records:

- minutes: wall-clock time of `make setup`;
- bytes downloaded, two ways:
  * `archives_bytes`: the size of every package file pip fetched (wheels and source archives),
    read from pip's own log (PIP_LOG). A file served from a local mirror or find-links folder
    is counted by its size on disk, a file from a package index by the bytes of pip's request
    for it. This is what a student downloads;
  * `network_rx_bytes`: bytes received by the machine's non-loopback network interfaces
    during the run (/proc/net/dev). It counts whatever else the machine received meanwhile,
    and misses what came from a local mirror, so it is shown for reference only;
- disk: the virtual environment, the pip cache, the model cache and the clone, in bytes
  allocated on disk (hard links counted once).

Results: benchmarks/results/install-<machine>.json (committed, like bench-*.json: README's
figures are generated from it and tests/test_install_cost.py keeps the two equal).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote, urlparse

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
README_START, README_END = "<!-- install-cost -->", "<!-- /install-cost -->"
COMMAND = ["make", "setup"]

# Lines of pip's log (pip 24-26) that name a package file it fetched
ADDED = re.compile(r"Added (\S+)(?: \(from [^)]*\))? from (\S+?)(?:#\S*)? to build tracker")
PROCESSING = re.compile(r"Processing (/\S+\.(?:whl|tar\.gz|zip))\b")
GET = re.compile(r'(https?://[^\s"]+?):\d+ "GET (/\S+\.(?:whl|tar\.gz|zip)) HTTP/[\d.]+" 200 (\d+)')
DOWNLOADING = re.compile(r"Downloading (\S+) \(([\d.]+) (kB|MB|GB|bytes)\)")
UNITS = {"bytes": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}


def machine() -> dict:
    """The machine in words, and a short name for the results file."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(),
                        re.MULTILINE).group(1).strip()
    except (OSError, AttributeError):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    words = re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-").split("-")[:2]
    return {"cpu": cpu, "cores": cores, "platform": platform.platform(),
            "python": platform.python_version(), "name": f"{cores}cpu-{'-'.join(words)}"}


def disk_bytes(folder: Path) -> int:
    """Bytes allocated on disk under a folder, each hard-linked file once (like `du -s`)."""
    seen, total = set(), 0
    for path, _, files in os.walk(folder):
        for name in [*files, "."]:
            try:
                stat = os.lstat(os.path.join(path, name))
            except OSError:
                continue
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_blocks * 512
    return total


def network_rx_bytes() -> int:
    """Bytes received so far by all non-loopback interfaces."""
    lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    fields = [line.replace(":", " ", 1).split() for line in lines]
    return sum(int(f[1]) for f in fields if f and f[0] != "lo")


def archives(pip_log: str) -> list[dict]:
    """Every package file pip fetched: file name, where from, and its size in bytes. Files from
    a package index: the bytes of pip's GET (else the size it printed); local files (a mirror,
    a find-links folder): their size on disk."""
    printed = {m[1]: float(m[2]) * UNITS[m[3]] for m in DOWNLOADING.finditer(pip_log)}
    got = {unquote(m[2].rsplit("/", 1)[-1]): int(m[3]) for m in GET.finditer(pip_log)}
    found = {}
    locations = [location for _, location in ADDED.findall(pip_log)]
    locations += PROCESSING.findall(pip_log)
    locations += [f"{m[1]}{m[2]}" for m in GET.finditer(pip_log)]
    for location in locations:
        name = unquote(location.rsplit("/", 1)[-1])
        if location.startswith(("http://", "https://")):
            size = got.get(name) or int(printed.get(name, 0))
            source = "package index"
        else:
            path = Path(unquote(urlparse(location).path) if "://" in location else location)
            if path.is_dir():
                continue  # the project itself, installed from the clone
            size = path.stat().st_size if path.is_file() else 0
            source = "local mirror"
        found.setdefault(name, {"file": name, "source": source, "bytes": size})
    return sorted(found.values(), key=lambda a: -a["bytes"])


def measure(keep: bool = False) -> dict:
    """Clone HEAD, run `make setup` with empty caches, and measure it."""
    work = Path(tempfile.mkdtemp(prefix="install-cost-"))
    clone, pip_cache, hf_home = work / "course", work / "pip-cache", work / "hf-home"
    pip_cache.mkdir()
    hf_home.mkdir()
    pip_log = work / "pip.log"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PIP_NO_CACHE_DIR", "VIRTUAL_ENV", "PYTHONPATH")
           and not k.startswith("COURSE_")}
    env.update(PIP_CACHE_DIR=str(pip_cache), HF_HOME=str(hf_home), PIP_LOG=str(pip_log))
    print(f"running {' '.join(COMMAND)} in {clone} (commit {head[:10]}), caches empty ...",
          flush=True)
    rx_before, start = network_rx_bytes(), time.perf_counter()
    done = subprocess.run(COMMAND, cwd=clone, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    rx = network_rx_bytes() - rx_before
    if done.returncode != 0:
        raise SystemExit(f"`{' '.join(COMMAND)}` failed in {clone} (exit {done.returncode}):\n"
                         f"{done.stdout[-3000:]}{done.stderr[-3000:]}")
    fetched = archives(pip_log.read_text(errors="replace"))
    venv = clone / ".venv"
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "commit": head,
        "command": " ".join(COMMAND),
        "minutes": round(seconds / 60, 2),
        "archives_bytes": sum(a["bytes"] for a in fetched),
        "archives_count": len(fetched),
        "archives_from": {source: sum(a["bytes"] for a in fetched if a["source"] == source)
                          for source in ("package index", "local mirror")},
        "network_rx_bytes": rx,
        "disk_bytes": {"venv": disk_bytes(venv), "pip_cache": disk_bytes(pip_cache),
                       "model_cache": disk_bytes(hf_home),
                       "clone_without_venv": disk_bytes(clone) - disk_bytes(venv)},
        "largest_archives": fetched[:10],
        "how": "archives_bytes: sizes of the package files named in pip's log (local files "
               "by their size on disk, downloads by the bytes pip's request received); network_rx_bytes: "
               "/proc/net/dev delta of non-loopback interfaces, includes other traffic",
    }
    if not keep:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    else:
        result["kept"] = str(work)
    return result


def gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def readme_text(result: dict, source) -> str:
    """README's sentence of figures, from one results file."""
    m, d = result["machine"], result["disk_bytes"]
    if result.get("archives_bytes") is None:  # a run whose package files were not counted
        fetched = (f"the machine received {gib(result['network_rx_bytes'])} over its network "
                   f"meanwhile, other work's traffic included (package files not counted in this "
                   f"run: {result.get('note', 'see the file')})")
    else:
        largest = result["largest_archives"][0]
        fetched = (f"fetched {result['archives_count']} package files of "
                   f"{gib(result['archives_bytes'])} ({gib(result['archives_from']['package index'])} "
                   f"downloaded from the package index, {gib(result['archives_from']['local mirror'])} "
                   f"read from the measuring machine's local package mirror; the largest "
                   f"{largest['file'].split('-')[0]}, {gib(largest['bytes'])}; the machine received "
                   f"{gib(result['network_rx_bytes'])} over its network meanwhile, other work's traffic "
                   f"included)")
    return (f"Measured from nothing (`python benchmarks/install_cost.py`: a fresh clone, empty pip "
            f"and model caches) on {m['cores']} CPU cores ({m['cpu']}), {result['date'][:10]}: "
            f"`make setup` took {result['minutes']:.1f} minutes and {fetched}; "
            f"the environment `.venv` takes {gib(d['venv'])} on disk, the pip cache "
            f"{gib(d['pip_cache'])}, the model cache {gib(d['model_cache'])} (the tiny profile's "
            f"models come as pip packages). Source: `{source}`.")


def update_readme(readme: Path, result: dict, source) -> bool:
    """Write the figures between the README's markers; True when the README changed."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"{readme} lacks the markers {README_START} ... {README_END}; "
                         "put them under the Quick start's commands")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    new = f"{head}{README_START}\n{readme_text(result, source)}\n{README_END}{tail}"
    if new != text:
        readme.write_text(new)
    return new != text


def readme_block(readme: Path) -> str:
    text = readme.read_text()
    return text.split(README_START, 1)[1].split(README_END, 1)[0].strip()


def latest_results(folder: Path = RESULTS) -> Path:
    files = sorted(folder.glob("install-*.json"), key=lambda p: json.loads(p.read_text())["date"])
    if not files:
        raise SystemExit(f"no install-*.json in {folder}: run benchmarks/install_cost.py first")
    return files[-1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", action="store_true",
                        help="write README.md's figures from the newest results, then stop")
    parser.add_argument("--keep", action="store_true", help="keep the temporary clone and caches")
    parser.add_argument("--output", type=Path, default=RESULTS, help="folder for the JSON")
    args = parser.parse_args(argv)
    if args.readme:
        source = latest_results(args.output)
        changed = update_readme(ROOT / "README.md", json.loads(source.read_text()),
                                source.relative_to(ROOT) if source.is_relative_to(ROOT) else source)
        print(f"README.md: figures {'updated' if changed else 'already up to date'} from {source}")
        return 0
    result = measure(keep=args.keep)
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"install-{result['machine']['name']}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(readme_text(result, path))
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
