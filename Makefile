# Two commands a researcher needs: `make demo` and `make test` (both install first).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.strata-installed
CORES ?= all
# TORCH=cpu (default, CI, this machine): the CPU wheel, and no nvidia-* package may come in.
# TORCH=cuda (a GPU machine): the CUDA build of the same torch version, from TORCH_INDEX_URL
# when set (e.g. https://download.pytorch.org/whl/cu128), else the registry's default
# Linux wheel (a CUDA build); torch.version.cuda must then be set. The stamp records the
# mode (torch=cpu / torch=cuda): a later plain `make` keeps the installed mode, asking for
# the other one re-installs (an older stamp without a mode counts as torch=cpu).
INSTALLED_TORCH := $(shell test -f $(STAMP) && { sed -n 's/^torch=//p' $(STAMP); echo cpu; } | head -n 1)
TORCH ?= $(or $(INSTALLED_TORCH),cpu)
TORCH_INDEX_URL ?=
ifeq ($(filter $(TORCH),cpu cuda),)
$(error TORCH must be cpu or cuda, got '$(TORCH)')
endif
export PIP_CONSTRAINT := $(CURDIR)/constraints/torch.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: FORCE install demo verdict test test-slow test-slurm test-full-config report bench lint clean-results

install: $(STAMP)

# torch first, then the project with torch held at 2.13.0 by the constraint above. A switch
# of mode removes the other build first (CUDA -> CPU also its nvidia-* and triton packages).
# CPU: fail if any CUDA (nvidia-*) package slipped in; CUDA: fail unless torch is a CUDA build.
ifeq ($(TORCH),cuda)
TORCH_INSTALL := $(BIN)/pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
TORCH_OTHER_BUILD := torch.version.cuda is None
TORCH_CHECK := @$(BIN)/python -c "import torch, sys; torch.version.cuda or sys.exit( \
		f'error: torch {torch.__version__} is a CPU-only build; TORCH=cuda needs a CUDA build (set TORCH_INDEX_URL)'); \
		print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, GPUs visible here: {torch.cuda.device_count()}')"
else
TORCH_INSTALL := $(BIN)/pip install --quiet torch==2.13.0
TORCH_OTHER_BUILD := torch.version.cuda is not None
TORCH_CHECK := @if $(BIN)/pip list --format=freeze | grep -i '^nvidia-'; then \
		echo "error: nvidia-* packages were installed (a CUDA torch build was pulled in; on a GPU machine use make install TORCH=cuda)" >&2; exit 1; fi
endif

ifneq ($(INSTALLED_TORCH),$(TORCH))
$(STAMP): FORCE
endif
FORCE:

$(STAMP): pyproject.toml constraints/torch.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if $(BIN)/python -c "import sys, torch; sys.exit(0 if $(TORCH_OTHER_BUILD) else 1)" 2>/dev/null; then \
		echo "replacing the installed torch build (TORCH=$(TORCH))"; \
		$(BIN)/pip uninstall --quiet -y torch $$($(BIN)/pip list --format=freeze | grep -iE '^(nvidia-|triton=)' | cut -d= -f1); fi
	$(TORCH_INSTALL)
	$(BIN)/pip install --quiet -e '.[dev]'
	$(TORCH_CHECK)
	@$(BIN)/python -c "import torch, sys; v = torch.__version__.split('+')[0]; \
		sys.exit(0 if v == '2.13.0' else f'error: torch {torch.__version__} installed, expected 2.13.0')"
	echo torch=$(TORCH) > $(STAMP)

# The whole DAG, then the verdict: did each model reach its learning targets (PASS / FAIL)?
demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)
	@$(MAKE) --no-print-directory verdict

# Print the verdict; exit 1 unless every learning target is met (so a change that stops a
# model learning fails `make demo`).
VERDICT ?= results/summary/verdict.md
verdict:
	@cat $(VERDICT)
	@head -n 1 $(VERDICT) | grep -q '^# Verdict: PASS' || { \
		echo "make demo: FAIL, a model missed a learning target (each target's numbers: $(VERDICT))" >&2; exit 1; }

test: $(STAMP)
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

test-slurm: $(STAMP)
	$(BIN)/python -m pytest -m slurm

# config/full.yaml end to end on fake RadGenome-ChestCT / MABe22 trees (published shapes, 2 steps)
test-full-config: $(STAMP)
	$(BIN)/python -m pytest -m slow tests/test_full_config.py

bench: $(STAMP)
	$(BIN)/python bench/preprocess_ct.py

lint: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/ruff check src tests workflow_scripts bench

clean-results:
	rm -rf results data/demo .snakemake
