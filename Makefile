# Two commands on a fresh machine:  make demo  (the main job end to end)  ·  make test  (the test suite)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test setup bench clean

setup: $(STAMP)

# The local mirror holds torch 2.14.1 + torchvision 0.29.1; pinning them keeps pip from pulling a newer multi-GB build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install --quiet -e ".[train,export,serve,dev]"
	touch $(STAMP)

demo: $(STAMP)
	PY=$(PY) bash scripts/demo.sh

test: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

# Each benchmark prints its table; bench/RESULTS.md records the figures with date and machine (about 20 min in all).
bench: $(STAMP)
	$(PY) -m bench.preprocess_bench
	$(PY) bench/train_throughput.py --threads 1 --clock cpu --iters 6 --warmup 1
	$(PY) -m bench.export_bench
	$(PY) -m bench.serve_bench --arch resnet18 resnet50 --requests 16 --rounds 2
	$(PY) -m bench.kserve_bench --arch resnet18 --requests 24 --concurrency 4 --rounds 2

clean:
	rm -rf demo_out .pytest_cache
