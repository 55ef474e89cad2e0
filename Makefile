# Two commands do all the set-up: `make demo` and `make test`.
# Both create .venv and install what is missing; a second run is quick because
# the install step is skipped while pyproject.toml and constraints.txt are unchanged.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# NVIDIA DALI (the "gpu" extra, pipeline/decoders/dali.py) has wheels for Linux x86-64 only:
# installed there (its CPU backend runs the tests without a GPU), left out elsewhere, where
# its tests skip. `make test GPU_EXTRA=` leaves it out anywhere (a ~420 MB download).
GPU_EXTRA ?= $(shell [ "$$(uname -s)-$$(uname -m)" = Linux-x86_64 ] && echo ,gpu)

.PHONY: demo test lint pictures bench system-deps clean

demo: $(STAMP) system-deps
	$(BIN)/tsm demo

test: $(STAMP) system-deps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# the PNGs under docs/pictures/ (see docs/pictures/README.md); runs a small label job
pictures: $(STAMP) system-deps
	$(BIN)/python docs/pictures/make.py

# what the benchmarks need beyond the tests (decord, for the baselines a user would write
# instead of the job: bench/baselines.py); then run the scripts under bench/ by hand
bench: $(STAMP) system-deps
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev,bench$(GPU_EXTRA)]"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# ffmpeg makes the synthetic and test videos; installed from Debian when missing.
system-deps:
	@command -v ffmpeg >/dev/null 2>&1 || { \
	  echo "installing ffmpeg (Debian package)"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q ffmpeg >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q ffmpeg >/dev/null; }; }

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev$(GPU_EXTRA)]"
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache mlflow.db mlruns mlartifacts demo_output .demo
