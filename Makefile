# Two commands a researcher needs: `make demo` and `make test` (both install first).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.strata-installed
CORES ?= all
export PIP_CONSTRAINT := $(CURDIR)/constraints/torch.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo test test-slow test-slurm report bench lint clean-results

install: $(STAMP)

# torch first (the local CPU wheel), then the project with torch held at 2.13.0 by the
# constraint above; fail if any CUDA (nvidia-*) package slipped in.
$(STAMP): pyproject.toml constraints/torch.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	@if $(BIN)/pip list --format=freeze | grep -i '^nvidia-'; then \
		echo "error: nvidia-* packages were installed (a CUDA torch build was pulled in)" >&2; exit 1; fi
	@$(BIN)/python -c "import torch, sys; v = torch.__version__.split('+')[0]; \
		sys.exit(0 if v == '2.13.0' else f'error: torch {torch.__version__} installed, expected 2.13.0')"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)

test: $(STAMP)
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

test-slurm: $(STAMP)
	$(BIN)/python -m pytest -m slurm

bench: $(STAMP)
	$(BIN)/python bench/preprocess_ct.py

lint: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/ruff check src tests workflow_scripts bench

clean-results:
	rm -rf results data/demo .snakemake
