# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export RAY_USAGE_STATS_ENABLED := 0
export PYTHONUNBUFFERED := 1

.PHONY: venv demo demo-widths test test-slow bench clean-venv

$(STAMP): setup.cfg constraints.txt requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -r requirements.txt
	$(PY) -m pip check
	touch $(STAMP)

venv: $(STAMP)

# one torch thread per process: on 2 cores, the stages' parallel workers (Ray trials) otherwise
# oversubscribe the CPU, and a contended 2-thread step was measured ~10x slower than 1 thread
demo: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m nas run --preset demo

# the demo with the sampling steps fixed: allocations choose the experts' widths only
demo-widths: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m nas run --preset widths-demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) benchmarks/latency.py
	$(PY) benchmarks/router_synthetic.py

clean-venv:
	rm -rf $(VENV)
