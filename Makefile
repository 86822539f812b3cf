# wsss-fast: set up, test, benchmark. Every target installs what it needs first.
PYTHON ?= python3
# The CPU wheel of torch that this kind of machine installs from a local file;
# a host that already has torch (e.g. a CUDA build) keeps its own.
TORCH_PIN ?= torch==2.13.0

.PHONY: install test demo bench check-cuda gpu-check clean

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "$(TORCH_PIN)"
	# build tools, also for the sdists built without isolation (pydensecrf2 needs Cython and numpy)
	$(PYTHON) -m pip install -q setuptools wheel ninja cython numpy
	# --no-build-isolation: build against the torch installed here (see README)
	$(PYTHON) -m pip install -q --no-build-isolation -e ".[test]"
	@$(PYTHON) -c "import wsss_fast, json; print(json.dumps(wsss_fast.backend_info()))"

test: install
	$(PYTHON) -m pytest -q

demo: install
	$(PYTHON) -m wsss_fast demo --out demo-run

bench: install
	$(PYTHON) benchmarks/bench_drs.py

check-cuda:
	$(PYTHON) scripts/check_cuda_compile.py

# On a CUDA host with torch, nvcc and compute-sanitizer (no pip, no network):
# build in place, cuda tests, regressions, compute-sanitizer. ARGS=--bench for
# the benchmarks, ARGS=--dry-run for the harness on the CPU (see the script).
gpu-check:
	PYTHON=$(PYTHON) bash scripts/gpu_check.sh $(ARGS)

clean:
	rm -rf build *.egg-info wsss_fast/_C*.so
