# The two commands a newcomer needs:   make demo   and   make test
PY ?= python3
STAMP := .jzi-installed

.PHONY: install demo test test-all bench clean native native-deps

$(STAMP): pyproject.toml
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[torch,geo,dev,ray]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m jzi.export.demo

test: $(STAMP) native
	$(PY) -m pytest -q

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

test-all: $(STAMP) native
	$(PY) -m pytest -q -m "slow or not slow"

clean:
	rm -rf $(STAMP) demo-out .pytest_cache build
