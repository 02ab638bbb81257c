# The two commands of the README: `make demo` and `make test`. Both create .venv on first use
# and install everything into it; afterwards the stamp file makes set-up a no-op.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.mtl-installed
# The ROS 2 command line and launch system (not on PyPI): the vendored upstream sources beside
# the repository when they exist, else tools/install_ros2_tools.sh fetches them from upstream.
ROS2_TOOLS_SRC ?= $(abspath ../shared/vendor/ros2-jazzy-python)
# Re-install only when one of these changes.
SETUP_INPUTS := requirements.txt constraints.txt setup.py setup.cfg package.xml \
                tools/build_interfaces.sh tools/install_ros2_tools.sh \
                $(wildcard ros_interfaces/vision_msgs/msg/*.msg)

.PHONY: venv test lint demo bench clean-venv help

help:
	@echo "make demo   - the whole pipeline on the built-in synthetic bag (creates .venv)"
	@echo "make test   - the test suite (creates .venv)"
	@echo "make lint   - ruff (lint + format check) and mypy"
	@echo "make bench  - every benchmark, one table"
	@echo "make venv   - only create/update .venv (both commands above do it themselves)"
	@echo "make clean-venv - delete .venv"

venv: $(STAMP)

$(STAMP): $(SETUP_INPUTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel -c constraints.txt
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	bash tools/build_interfaces.sh $(VENV) ros_interfaces/vision_msgs
	bash tools/install_ros2_tools.sh $(VENV) $(ROS2_TOOLS_SRC)
	@touch $@

# Lint and type-check first (ruff's rules and mypy's settings are in pyproject.toml; a finding
# fails the target), then the suite, whose summary stays the last line.
test: $(STAMP)
	$(VENV)/bin/ruff check --quiet .
	$(VENV)/bin/ruff format --check --quiet .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

demo: $(STAMP)
	$(VENV)/bin/mtl-demo $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) bench/run_all.py

clean-venv:
	rm -rf $(VENV)
