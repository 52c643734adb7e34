# LAWM robot stack. Two commands matter: `make demo` (the main job) and `make test`.
# Every target but `lint` bootstraps what it needs through `setup` (idempotent, seconds when
# nothing changed).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup setup-viewer test colcon-test demo smoke bench bench-robustness lint clean

setup:
	@bash scripts/setup.sh

# Optional: the Rerun SDK for `train.py view --out X.rrd` and `eval-sim --record-format rrd`
# (a 170 MB wheel: it bundles the viewer). MCAP files for Foxglove need nothing more.
setup-viewer: setup
	$(PY) -m pip install --disable-pip-version-check -q -r requirements/viewer.txt \
	  -c requirements/lock.txt

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# The ROS packages' own tests (each package's test/: ruff over its sources, lawm_core's contract
# checks) through colcon, on the workspace `setup` built, in the environment it builds in;
# tests/test_colcon_test.py runs the same in a temporary workspace.
colcon-test: setup
	cd ros2_ws && unset AMENT_PREFIX_PATH COLCON_PREFIX_PATH PYTHONPATH \
	  && export PATH="$(CURDIR)/$(VENV)/bin:$$PATH" \
	  && colcon --log-base log test --event-handlers console_direct+ \
	  && colcon --log-base log test-result --verbose

demo: setup
	$(PY) training/train.py demo

smoke: setup
	$(PY) training/train.py smoke --out runs/smoke

bench: setup
	source scripts/env.sh && $(PY) bench/run.py

bench-robustness: setup
	source scripts/env.sh && $(PY) bench/robustness.py

lint:
	@if [ -x $(VENV)/bin/ruff ]; then R=$(VENV)/bin/ruff; else R=ruff; fi; \
	$$R check . && $$R format --check .

clean:
	rm -rf ros2_ws/build ros2_ws/install ros2_ws/log runs/smoke .pytest_cache .ruff_cache
