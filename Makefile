# The two commands a newcomer needs:   make demo   and   make test
#
# make keeps its own virtual environment in .venv/ (Debian's and Ubuntu's system Python refuse
# pip installs), made from $(PYTHON) and installed into once; the install stamp lives inside it.
#   make test ARGS="-m slow -k export"     extra pytest arguments
#   make test TEST_WORKERS=4               pytest-xdist workers (2: one per core of a 2-core machine)
#   make PY=/path/to/python ...            use an environment of your own instead (e.g. one with a CUDA torch)
#   make TORCH_INDEX_URL=...               where pip gets torch from (README: the CPU wheel index for CPU machines)
PYTHON ?= python3
VENV ?= .venv
VENV_FLAGS ?=
TORCH_VERSION ?= 2.13.0
TORCH_INDEX_URL ?=
PIP_FLAGS ?= -q
ARGS ?=
TEST_WORKERS ?= 2
# whole files per worker, longest first (tests/conftest.py); pytest-benchmark cannot time beside another worker, so its
# tests only check their answers here (timings: tests/test_latency_benchmark.py's own command, or jzi-bench)
PYTEST = $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --benchmark-disable

ifeq ($(origin PY),undefined)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.jzi-installed
VENV_CFG := $(VENV)/pyvenv.cfg
else
# your own interpreter: the stamp is keyed on its environment (sys.prefix), so another one installs afresh
STAMP = .jzi-installed-$(shell $(PY) -c 'import sys; print(sys.prefix)' | cksum | cut -d' ' -f1)
VENV_CFG :=
endif

.PHONY: install demo test test-all clean distclean native native-deps

$(VENV)/pyvenv.cfg:
	@$(PYTHON) -m venv $(VENV_FLAGS) $(VENV) || { rm -rf $(VENV); \
	  echo "make: cannot create $(VENV) with '$(PYTHON) -m venv'; on Debian/Ubuntu: sudo apt-get install python3-venv" >&2; \
	  exit 1; }

# torch first and only when none is importable, so that a GPU user's own torch stays untouched
$(STAMP): pyproject.toml $(VENV_CFG)
	@if $(PY) -c "import torch" 2>/dev/null; then \
	  echo "make: using the installed torch $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	elif [ -n "$(TORCH_INDEX_URL)" ]; then \
	  $(PY) -m pip install $(PIP_FLAGS) --index-url "$(TORCH_INDEX_URL)" torch==$(TORCH_VERSION) || { \
	    echo "make: TORCH_INDEX_URL failed; installing torch==$(TORCH_VERSION) from pip's configured index" >&2; \
	    $(PY) -m pip install $(PIP_FLAGS) torch==$(TORCH_VERSION); }; \
	else \
	  $(PY) -m pip install $(PIP_FLAGS) torch==$(TORCH_VERSION); \
	fi
	$(PY) -m pip install $(PIP_FLAGS) -e ".[torch,geo,dev,ray,bench]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m jzi.export.demo $(ARGS)

test: $(STAMP) native
	$(PYTEST) $(ARGS)

# The C++ runtime (cpp_bindings/): system packages, ONNX Runtime's headers, CMake build, ctest, and the
# Python module jzi.native installed into $(PY) (its parity tests then run with the rest).
NATIVE_DEBS := cmake g++ libopencv-core-dev libopencv-imgproc-dev libopencv-imgcodecs-dev nlohmann-json3-dev libssl-dev
native-deps:
	@dpkg -s $(NATIVE_DEBS) >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends $(NATIVE_DEBS); \
	  else echo "make native needs: sudo apt-get install $(NATIVE_DEBS)" >&2; exit 1; fi; }

native: $(STAMP) native-deps
	cpp_bindings/scripts/fetch_onnxruntime_headers.sh build/onnxruntime-headers
	cmake -S . -B build -DJZI_BUILD_PYTHON=OFF -DPython_EXECUTABLE="$$($(PY) -c 'import sys; print(sys.executable)')"
	cmake --build build -j
	ctest --test-dir build --output-on-failure
	$(PY) -m pip install -q --no-build-isolation ./cpp_bindings

# everything: slow tests too (gpu tests skip themselves without a GPU)
test-all: $(STAMP) native
	$(PYTEST) -m "slow or not slow" $(ARGS)

clean:
	rm -rf demo-out .pytest_cache .jzi-installed .jzi-installed-* build

distclean: clean
	rm -rf $(VENV)
