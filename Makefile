# perpdex: `make install`, `make test`, `make soak`, `make demo`, `make bench`. Nothing is
# installed by hand: the virtual environment, the dependencies and the Cython build all come
# from this file.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SOURCES := $(wildcard engine/*.pyx engine/*.pxd) setup.py pyproject.toml

.PHONY: install build test soak debug-test demo bench clean

# The editable install builds the extensions in place (setuptools' editable mode), so it stamps
# engine/.built too; `build` runs in a second make, which sees that stamp, so a fresh install
# compiles once. After that, `build` recompiles only when a .pyx, .pxd or setup.py changes.
install: $(STAMP)
	@$(MAKE) --no-print-directory build

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel "Cython>=3.0.10"
	$(PY) -m pip install --quiet --no-build-isolation -e '.[dev,replication]'
	$(PY) -c "$$CHECKOUT_PTH"
	touch engine/.built $@

# The distribution installs perpdex.engine, perpdex.gateway, perpdex.bench and perpdex.examples
# only. This development venv also puts the checkout at the end of its path, so that `import
# engine` (the checkout's alias of perpdex.engine, engine/_checkout.py) works from any folder,
# as it did before the rename.
define CHECKOUT_PTH
import pathlib, site
pathlib.Path(site.getsitepackages()[0], "perpdex-checkout.pth").write_text(str(pathlib.Path.cwd()) + "\n")
endef
export CHECKOUT_PTH

build: $(STAMP) engine/.built
engine/.built: $(SOURCES) | $(STAMP)
	$(PY) setup.py --quiet build_ext --inplace
	touch $@

# In a random order (pytest-randomly): the seed is printed at the end; `pytest -p randomly
# --randomly-seed=N` runs that order again.
test: install
	$(PY) -m pytest -q -p randomly

# The slow suite (`pytest -m slow`): the soaks, the crash and failover loops, the wheel build.
soak: install
	$(PY) -m pytest -q -p randomly -m slow

# The debug build (PERPDEX_DEBUG=1, setup.py: bounds checks, and the engine's own checks where
# values cross rooms, `CHECKS` in engine/units.pxd) of a copy of engine/ under build/debug,
# and the engine's property tests run against it: python -S with the copy first on the path,
# so the editable install's mapping to engine/ does not apply.
DEBUG_DIR := build/debug
DEBUG_TESTS := tests/engine/test_solvency.py tests/engine/test_solvency_stateful.py \
	tests/engine/test_differential.py tests/engine/test_matching.py tests/engine/test_liquidation.py \
	tests/engine/test_risk_index.py tests/engine/test_magnitudes.py \
	tests/engine/test_money_conservation.py tests/engine/test_handle_api.py \
	tests/engine/test_records.py tests/engine/test_debug_build.py
debug-test: install
	rm -rf $(DEBUG_DIR) && mkdir -p $(DEBUG_DIR)/path/perpdex
	cp -r engine setup.py pyproject.toml README.md $(DEBUG_DIR)/
	rm -f $(DEBUG_DIR)/engine/*.so $(DEBUG_DIR)/engine/*.c $(DEBUG_DIR)/engine/.built
	cd $(DEBUG_DIR) && PERPDEX_DEBUG=1 $(CURDIR)/$(PY) setup.py --quiet build_ext --inplace
	touch $(DEBUG_DIR)/path/perpdex/__init__.py
	ln -s $(CURDIR)/$(DEBUG_DIR)/engine $(DEBUG_DIR)/path/perpdex/engine
	ln -s $(CURDIR)/gateway $(DEBUG_DIR)/path/perpdex/gateway
	ln -s $(CURDIR)/bench $(DEBUG_DIR)/path/perpdex/bench
	PYTHONPATH=$(CURDIR)/$(DEBUG_DIR)/path:$(CURDIR):$$($(PY) -c "import site; print(site.getsitepackages()[0])") \
		PERPDEX_EXPECT_CHECKS=1 $(PY) -S -m pytest -q -p no:randomly -p no:cacheprovider $(DEBUG_TESTS)

demo: install
	$(VENV)/bin/perpdex demo --seconds 45

# The whole suite against the plain Python book (docs/performance.md), then the microbenchmarks.
bench: install
	$(VENV)/bin/perpdex bench --suite all --json bench/results/latest.json --plot bench/results
	$(PY) -m pytest bench/ --benchmark-only --benchmark-columns=median,iqr,ops -q

clean:
	rm -rf build engine/*.c engine/*.so engine/*.html engine/.built *.egg-info
