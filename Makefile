# Every target creates the virtual environment on first use (about 3 minutes on a fresh machine).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# nbgrader runs `alembic` when it creates a gradebook: the venv's bin must be on PATH.
export PATH := $(CURDIR)/$(BIN):$(PATH)
# Tests and CI run the notebooks in fast mode.
# Tests run two workers (pytest-xdist) with one torch thread each: no oversubscription on 2 cores.
PYTEST := $(BIN)/python -m pytest

.PHONY: help venv lab pack demo test test-fast test-notebooks release check-release benchmark clean

help:
	@echo "make demo            grade the bundled example submissions in a throw-away course"
	@echo "make lab             JupyterLab on notebooks/ (the student versions)"
	@echo "make pack            the students' folder and zip: build/student-pack(.zip)"
	@echo "make test            every test: helpers, references, grading, mistakes, nbval, release"
	@echo "make test-fast       the quick inner loop (no notebook execution end to end)"
	@echo "make release         regenerate notebooks/ from solutions/"
	@echo "make benchmark       training and sampling speed on this machine"

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $(STAMP)

# JupyterLab refuses to start as root (a container, a Codespace) without --allow-root.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
LAB_ARGS   ?=

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/ $(ALLOW_ROOT) $(LAB_ARGS)

pack: $(STAMP)
	$(BIN)/python -m grading pack --zip

# --keep: the demo's grades, CSVs and feedback pages stay where it prints them
demo: $(STAMP)
	$(BIN)/python -m grading demo --keep

test: $(STAMP)
	OMP_NUM_THREADS=1 DIFFUSION_FAST=1 $(PYTEST) -n 2 --dist loadfile tests
	OMP_NUM_THREADS=1 DIFFUSION_FAST=1 $(PYTEST) -n 2 --dist loadfile --nbval-lax --nbval-current-env -p no:python solutions
	$(BIN)/python -m grading release --check

test-fast: $(STAMP)
	OMP_NUM_THREADS=1 DIFFUSION_FAST=1 $(PYTEST) -n 2 --dist loadfile -m "not slow" tests

test-notebooks: $(STAMP)
	OMP_NUM_THREADS=1 DIFFUSION_FAST=1 $(PYTEST) -n 2 --dist loadfile --nbval-lax --nbval-current-env -p no:python solutions

release: $(STAMP)
	$(BIN)/python -m grading release

check-release: $(STAMP)
	$(BIN)/python -m grading release --check

benchmark: $(STAMP)
	$(BIN)/python benchmarks/train_speed.py

clean:
	rm -rf $(VENV) .pytest_cache
