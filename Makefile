# The two commands a newcomer needs: `make serve` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: serve test install clean bench

$(PY):
	python3 -m venv $(VENV)

# torch first, pinned, only where none is present: an unpinned torch pulls CUDA builds.
$(STAMP): pyproject.toml | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e '.[server,test]'
	@touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/fluxhost serve

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PIP) install --quiet -e '.[server,test,bench]'
	$(PY) bench/serve_load.py
	$(PY) bench/engine_overhead.py
	$(PY) bench/socket_fanout.py
	$(PY) bench/batching.py
	$(PY) bench/moderation.py
	$(PY) bench/faults.py
	$(PY) bench/soak.py
	$(PY) bench/demo_model.py

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
