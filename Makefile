# Two commands do all set-up on a fresh machine:
#   make demo   quantize an example model and show what each stage did
#   make test   run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test bench clean

# torch is pinned and installed first, on its own, so that pip never resolves
# an open requirement to a multi-gigabyte CUDA build. torchvision (the tests'
# real architectures) is published as a CUDA build: its model code is pure
# Python, so it goes in without its dependencies, over the CPU torch; it is
# never a dependency of qgraph. It goes into a folder of its own, off
# sys.path: a plain `import torchvision` fails beside the CPU torch (its C++
# operators are missing), and code that tries it, such as PyTorch's own
# testing helpers, must see it absent. tests/helpers/torchvision_models.py
# defines the missing operators, then imports it from there.
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet pillow
	$(BIN)/python -m pip install --quiet --no-deps --target $(VENV)/torchvision torchvision==0.28.0
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python examples/quickstart.py

# Lint and format check, types, then the tests: two workers (the machine's
# two cores), each test module whole in one of them so that module-scoped
# fixtures are computed once.
test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile

# ONNX Runtime is the yardstick of bench_onednn.py: the bench extra. Without it
# (no network) that benchmark prints its other columns and says what it skipped.
bench: $(VENV)/.installed
	-$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) qgraph-out
