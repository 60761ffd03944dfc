"""JupyterLab as a student runs it: a real Chromium opens notebooks 00 and 05 and runs them all.

`make test-browser` installs Debian's `chromium` (Playwright cannot download its own browsers
here) and runs this file. The test starts `.venv/bin/jupyter lab` on 127.0.0.1 with a random
free port and a token, in a copy of the course folder (so that the notebooks' results and runs
land in a temporary folder, not in the checkout), with none of the course's or the hub's
environment variables: the profile must come out as tiny by itself. The hub address points at a
closed local port, so a notebook that tried to reach the Hugging Face Hub would fail here.
Playwright drives the browser: the notebook is opened by double-clicking it in the file browser,
the kernel "Python 3 (course)" chosen if JupyterLab asks, and menu Run > Run All Cells clicked.
Screenshots of each finished notebook go to build/test-results/browser/.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTEFACTS = ROOT / "build" / "test-results" / "browser"
KERNEL = "Python 3 (course)"
# notebook -> (progress-bar widgets at least, plot images at least)
EXPECTED = {"00_setup_check.ipynb": (0, 0), "05_rag.ipynb": (1, 3)}
# notebook -> what it prints in a course folder where no other notebook has run yet
SAYS = {"05_rag.ipynb": ["no results of 02_full_finetuning in the tiny profile yet: run "
                         "notebooks/02_full_finetuning.ipynb first"]}
NOTEBOOK_TIMEOUT_S = 900
# Variables a student's shell would not have, or that would pick the profile for the notebook
NOT_A_STUDENTS = re.compile(r"^(COURSE_|HF_|HUGGINGFACE_|TRANSFORMERS_|TOKENIZERS_|MPLBACKEND$"
                            r"|PYTEST_|JUPYTER|JPY_|VIRTUAL_ENV$|PYTHONPATH$)")
# A text progress bar (tqdm without widgets): "45%|████▌     | 9/20"
TEXT_BAR = re.compile(r"\d+%\|.*\| *\d+/\d+")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.fail("No Chromium found: run `make browser-deps` (apt-get install chromium), or put "
                "a chromium binary on PATH")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a copy of the course folder: (base URL, token, course folder)."""
    course = tmp_path_factory.mktemp("course")
    shutil.copy(ROOT / "pyproject.toml", course)  # marks the course folder for results/ and runs/
    shutil.copytree(ROOT / "notebooks", course / "notebooks",
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    settings = course / ".lab-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    # JupyterLab draws only the cells in view by default; the test reads every cell's output
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    notices = course / ".lab-settings" / "@jupyterlab" / "apputils-extension"
    notices.mkdir(parents=True)  # no "fetch Jupyter news?" toast over the screenshots
    (notices / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}')
    env = {k: v for k, v in os.environ.items() if not NOT_A_STUDENTS.match(k)}
    env.update(JUPYTERLAB_SETTINGS_DIR=str(course / ".lab-settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(course / ".lab-workspaces"),
               HF_ENDPOINT="http://127.0.0.1:9")  # a closed port: any hub request fails
    port, token = free_port(), secrets.token_hex(16)
    jupyter = Path(sys.executable).parent / "jupyter"
    log = ARTEFACTS / "jupyterlab.log"
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    command = [str(jupyter), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={course / 'notebooks'}"]
    if os.geteuid() == 0:
        command.append("--allow-root")  # CI containers run as root
    server = subprocess.Popen(command, cwd=course, env=env, stdout=log.open("w"),
                              stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"jupyter lab did not start; its log: {log}\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
    yield url, token, course
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()


@pytest.fixture(scope="module")
def page(lab):
    from playwright.sync_api import sync_playwright

    url, token, _ = lab
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(f"{url}/lab?token={token}")
        page.locator(".jp-DirListing-item").first.wait_for()
        yield page
        browser.close()


def active_notebook(page):
    return page.locator(".jp-NotebookPanel:visible")


def open_and_run_all(page, name: str):
    """Open a notebook from the file browser, choose the course kernel if asked, Run All, wait."""
    page.locator(".jp-DirListing-item", has_text=name).dblclick()
    panel = active_notebook(page)
    panel.locator(".jp-Notebook").wait_for()
    dialog = page.locator(".jp-Dialog")
    try:
        dialog.wait_for(timeout=3_000)
        dialog.locator("select").select_option(label=KERNEL)
        dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
    except Exception:  # no dialog: the notebook's kernelspec names the course kernel
        pass
    page.wait_for_function(
        "() => document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) "
        ".jp-Notebook-ExecutionIndicator')?.getAttribute('data-status') === 'idle'",
        timeout=120_000)
    kernel = panel.locator(".jp-KernelName, .jp-Toolbar-kernelName").first.inner_text()
    assert kernel.strip() == KERNEL, f"{name} opened with the kernel {kernel!r}, not {KERNEL!r}"
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    prompts = panel.locator(".jp-CodeCell .jp-InputArea-prompt")
    start, quiet = time.monotonic(), 0
    while time.monotonic() - start < NOTEBOOK_TIMEOUT_S:
        time.sleep(2)
        texts = prompts.all_inner_texts()
        status = panel.locator(".jp-Notebook-ExecutionIndicator").get_attribute("data-status")
        running = any("*" in t for t in texts)
        # done: the kernel idle and nothing queued, three checks in a row
        quiet = quiet + 1 if (status == "idle" and not running) else 0
        if quiet >= 3:
            break
    else:
        pytest.fail(f"{name} still running after {NOTEBOOK_TIMEOUT_S} s")
    seconds = time.monotonic() - start
    page.keyboard.press("Control+s")
    return panel, seconds


def test_notebooks_use_widget_progress_bars():
    """Progress bars come from tqdm.auto (widgets in JupyterLab, text elsewhere)."""
    for path in (ROOT / "course_utils").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*from tqdm import|^\s*import tqdm\b", text, re.MULTILINE), (
            f"{path.relative_to(ROOT)} imports plain tqdm: use `from tqdm.auto import tqdm`")


@pytest.mark.parametrize("name", list(EXPECTED))
def test_run_all_in_jupyterlab(page, lab, name):
    _, _, course = lab
    panel, seconds = open_and_run_all(page, name)
    shot = ARTEFACTS / f"{Path(name).stem}.png"
    scroller = panel.locator(".jp-WindowedPanel-outer")  # the notebook's scrolling box
    panel.locator(".jp-Cell").last.scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    page.screenshot(path=str(shot))  # the window as the student sees it at the end
    # the whole notebook in one picture: a window as tall as the notebook (at most 16,000 px)
    height = scroller.evaluate("n => n.scrollHeight")
    page.set_viewport_size({"width": 1400, "height": min(height + 200, 16_000)})
    scroller.evaluate("n => n.scrollTop = 0")
    page.wait_for_timeout(1_000)
    full = ARTEFACTS / f"{Path(name).stem}-whole.png"
    page.screenshot(path=str(full))
    page.set_viewport_size({"width": 1400, "height": 1000})
    print(f"{name}: ran in {seconds:.0f} s in the browser; screenshots {shot}, {full}")

    # What the browser shows
    prompts = panel.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()
    unrun = [i for i, t in enumerate(prompts) if not re.search(r"\[\d+\]", t)]
    widgets = panel.locator(".jp-OutputArea-output .widget-hprogress .progress-bar").count()
    images = panel.locator(".jp-OutputArea-output img").count()
    want_widgets, want_images = EXPECTED[name]
    # What the kernel produced, as JupyterLab saved it
    for _ in range(30):  # JupyterLab saves the notebook (Ctrl+S) with every output
        nb = nbformat.read(course / "notebooks" / name, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        if all(c.execution_count for c in code):
            break
        time.sleep(1)
    errors = [(i, o.get("ename"), o.get("evalue")) for i, c in enumerate(code)
              for o in c.outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for c in code for o in c.outputs)
    assert not errors, f"{name}: error outputs (code cell, error, message): {errors}"
    assert not unrun, f"{name}: code cells {unrun} did not run (prompts {prompts})"
    assert len(prompts) == len(code)
    assert all(c.execution_count for c in code), "JupyterLab did not save the run (Ctrl+S)"
    assert "127.0.0.1:9" not in text, f"{name} tried to reach the Hugging Face Hub"
    assert "Profile: tiny (offline, packaged models), chosen automatically: no CUDA GPU" in text
    for line in SAYS.get(name, []):
        assert line in text
    assert not TEXT_BAR.search(text), f"{name}: a text progress bar: {TEXT_BAR.search(text)[0]}"
    assert widgets >= want_widgets, f"{name}: {widgets} progress-bar widgets drawn"
    assert images >= want_images, f"{name}: {images} plot images drawn"
    saved_images = sum("image/png" in o.get("data", {}) for c in code for o in c.outputs)
    assert saved_images >= want_images
    saved_widgets = sum("application/vnd.jupyter.widget-view+json" in o.get("data", {})
                        for c in code for o in c.outputs)
    assert saved_widgets >= want_widgets
    # the kernel started in the notebooks' folder and found the course folder
    assert (course / "results" / "tiny" / f"{Path(name).stem}.json").is_file()
