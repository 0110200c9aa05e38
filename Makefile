# The two commands a newcomer needs: `make serve` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: serve test install clean bench dist

$(PY):
	python3 -m venv $(VENV)

# torch first, pinned, only where none is present: an unpinned torch pulls CUDA builds. pip shows
# its progress: the first install is about 1.7 GB and takes minutes.
$(STAMP): pyproject.toml | $(PY)
	@echo "Installing fluxhost into $(VENV): about 1.7 GB on first run (torch 750 MB, diffusers, transformers,"
	@echo "the test tools), a few minutes; later runs install only what pyproject.toml changed."
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install $(TORCH)
	$(PIP) install -e '.[server,test]'
	@touch $(STAMP)
	@echo "Installed. The fluxhost command is $(VENV)/bin/fluxhost (or run: . $(VENV)/bin/activate)."

install: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/fluxhost serve

# A pytest worker per core (at most 4), a test file each, the longest files first (tests/conftest.py).
test: $(STAMP)
	$(PY) -m pytest -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder

bench: $(STAMP)
	$(PIP) install --quiet -e '.[server,test,bench]'
	$(PY) bench/serve_load.py
	$(PY) bench/engine_overhead.py
	$(PY) bench/socket_fanout.py
	$(PY) bench/batching.py
	$(PY) bench/moderation.py
	$(PY) bench/faults.py
	$(PY) bench/soak.py
	$(PY) bench/run_anatomy.py
	$(PY) bench/cold_start.py
	$(PY) bench/demo_model.py

# A wheel to install elsewhere (demo weights included): pip install 'dist/fluxhost-0.1.0-py3-none-any.whl[server]'
dist: | $(PY)
	$(PIP) wheel --no-deps --wheel-dir dist .

clean:
	rm -rf $(VENV) .pytest_cache build dist src/*.egg-info
