# Two entry points: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
WORLD  ?= build/world
export HF_HUB_OFFLINE := 1
export DVC_NO_ANALYTICS := 1

.PHONY: demo test lint bench clean

$(BIN)/geopile: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-compile -e '.[dev]'
	@# bytecode on every core (pip compiles on one); like pip, skip files that do not compile
	@# (torch ships some written for newer Pythons): they are compiled, if ever, on import
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null 2>&1 || true
	touch $(BIN)/geopile

demo: $(BIN)/geopile
	$(BIN)/geopile demo --world $(WORLD)

# Tests run as on a machine booted a minute ago (tests/freshboot/sitecustomize.py shifts the
# monotonic clock of pytest and of every process it starts): uptime-dependent bugs fail here too.
test: $(BIN)/geopile
	$(BIN)/ruff check .
	PYTHONPATH=$(CURDIR)/tests/freshboot$${PYTHONPATH:+:$$PYTHONPATH} GEOPILE_FAKE_UPTIME_S=60 \
		$(BIN)/python -m pytest

bench: $(BIN)/geopile
	$(BIN)/python -m bench.ingest
	$(BIN)/python -m bench.dedup
	$(BIN)/python -m bench.shard
	$(BIN)/python -m bench.loader
	$(BIN)/python -m bench.train_step

clean:
	rm -rf build data reports shards .pytest_cache
