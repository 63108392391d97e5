# The suite's two commands: `make demo` and `make test`. Both set themselves up from a fresh clone.
# `make check` is the quick tier while working: lint and the tests not marked slow (about 2 minutes).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo-work
# Nothing in the demo or the tests may reach the Hugging Face hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

# Container image (docs/container.md, "Container image"). SQSH is where the sbatch scripts look for it.
BASE_IMAGE ?= mosaicml/llm-foundry:2.7.0_cu128_aws-latest
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE_TAG ?= mpt-slurm-bench:$(VERSION)
SQSH ?= llm-foundry.sqsh

# Air-gapped clusters (docs/airgap.md): `make bundle BUNDLE=DIR` writes the bundle on a connected machine;
# `make install|demo|test BUNDLE=DIR` install from it with no index. INSTALL_FROM is the bundle the
# venv is installed from: BUNDLE, except for `make bundle` itself (which writes it).
PIP_VERSION := 25.3
BUNDLE ?=
INSTALL_FROM := $(if $(filter bundle,$(MAKECMDGOALS)),,$(BUNDLE))
ifneq ($(INSTALL_FROM),)
ifeq ($(wildcard $(INSTALL_FROM)/bundle.json),)
$(error BUNDLE=$(INSTALL_FROM) holds no bundle.json: point BUNDLE at the folder `make bundle` wrote (docs/airgap.md, "Air-gapped clusters"))
endif
endif

.PHONY: help install demo test check test-slurm test-airgap test-image lint lock clean image sqsh base-digest bundle gpu-smoke

help:
	@echo "make demo   preprocess a C4 sample, train a tiny MPT on the CPU, print the report"
	@echo "make test   lint (ruff, mypy, shellcheck, hadolint, yamls) and the full test suite, local Slurm included"
	@echo "make test-airgap  the whole lock installed offline from a real bundle, then the demo (CI runs it after make test)"
	@echo "make test-image  the image built with buildah on a stand-in base, entered as pyxis would (CI runs it after make test)"
	@echo "make check  lint and the tests not marked slow: the quick tier (about 2 minutes)"
	@echo "make test-slurm  the Slurm modules alone, on a cluster started by 'python -m tests.local_slurm up' if one runs"
	@echo "             (any area: .venv/bin/python -m pytest -m 'training and not slurm'; docs/contributing.md, Development)"
	@echo "make gpu-smoke  on a GPU machine: what only a GPU proves, one PASS/FAIL line per claim (docs/container.md, 'GPU smoke test')"
	@echo "make lock   re-resolve constraints.txt (Python 3.11) and constraints-py312.txt (the image) from pyproject.toml"
	@echo "make image  docker build the container; make sqsh: enroot import it to $(SQSH)"
	@echo "make bundle BUNDLE=DIR  everything for an air-gapped cluster; make install BUNDLE=DIR there"

# pip installs without byte-compiling (it compiles one file at a time); compileall then uses every core
# (about 25 s less on 2 cores). The .pyc files matter: without them each training start imports 2.4x slower.
$(VENV)/.installed: pyproject.toml constraints.txt $(if $(INSTALL_FROM),$(INSTALL_FROM)/bundle.json)
	@test -x "$(PY)" || $(PYTHON) -m venv "$(VENV)"
ifneq ($(INSTALL_FROM),)
	"$(PY)" -m test_case.bundle install "$(INSTALL_FROM)"
else
	"$(PY)" -m pip install -q --upgrade "pip==$(PIP_VERSION)"
	"$(PY)" -m pip install -q --no-compile -c constraints.txt -e ".[dev]"
	"$(PY)" -m compileall -q -j 0 "$$("$(PY)" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" >/dev/null
endif
	touch "$@"

install: $(VENV)/.installed

demo: install
	"$(PY)" -m test_case.demo.assets --out "$(DEMO_DIR)"
	C4_INPUT="$(DEMO_DIR)/c4-sample" DATA_ROOT="$(DEMO_DIR)/data" TOKENIZER="$(DEMO_DIR)/tokenizer" \
	  CONCAT_TOKENS=128 WORKERS=2 bash slurm-scripts/1.c4-preprocess.sbatch
	DATA_ROOT="$(DEMO_DIR)/data" TOKENIZER="$(DEMO_DIR)/tokenizer" SAVE_ROOT="$(DEMO_DIR)/checkpoints" \
	  bash slurm-scripts/2.train-mpt-manual-distributed.sbatch mpt-tiny-cpu
	"$(PY)" report.py logs/

lint: install
	"$(PY)" -m ruff check .
	"$(PY)" -m ruff format --check .
	"$(PY)" -m mypy
	"$(VENV)/bin/shellcheck" -x slurm-scripts/*.sbatch slurm-scripts/*.sh .ci/run
	"$(VENV)/bin/hadolint" 0.llm-foundry.Dockerfile
	"$(PY)" -m tests.check_yamls yamls/*.yaml

test: lint
	"$(PY)" -m pytest -m "not airgap and not image"

# The whole lock installed offline from a real bundle, then the demo (tests/test_bundle.py, about 6 min):
# `make test` proves the same mechanism on a small bundle; .ci/run runs this too.
test-airgap: install
	"$(PY)" -m pytest -m airgap

# The image built with buildah on a stand-in of its base, then entered as pyxis enters it
# (tests/test_image_build.py, about 8 min; root, buildah, mmdebstrap, nvcc, PyPI): .ci/run runs it too.
test-image: install
	"$(PY)" -m pytest -m image

check: lint
	TEST_TIER=check "$(PY)" -m pytest -q -m "not slow"

# No lint: the quick loop while working on the Slurm side. A cluster already running from
# `python -m tests.local_slurm up` (same slurm.conf) is reused and left running; otherwise one is
# started and stopped.
test-slurm: install
	"$(PY)" -m pytest -m slurm

# On a connected machine. TOKENIZER=DIR adds a local tokenizer (the default with the bundle), HUB=0
# fetches nothing from the Hugging Face hub, C4_INPUT=DIR or C4_FILES=N adds C4 files, IMAGE_WHEELS=1
# the image's Python, TARBALL=1 a DIR.tar beside the folder. The image and $(SQSH) when they exist.
bundle: install
	"$(PY)" -m test_case.bundle build --out "$(or $(BUNDLE),bundle)" --tool "pip==$(PIP_VERSION)" \
	  --image-tag "$(IMAGE_TAG)" --sqsh "$(SQSH)" \
	  $(if $(TOKENIZER),--tokenizer "$(TOKENIZER)") $(if $(filter 0,$(HUB)),--no-hub) \
	  $(if $(C4_INPUT),--c4-input $(C4_INPUT)) $(if $(C4_FILES),--c4-files "$(C4_FILES)") \
	  $(if $(filter 1,$(IMAGE_WHEELS)),--image-wheels) $(if $(filter 1,$(TARBALL)),--tarball)

lock: install
	"$(VENV)/bin/uv" pip compile pyproject.toml --extra dev --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --no-header -o constraints.txt
	"$(VENV)/bin/uv" pip compile pyproject.toml --extra dev --python-version 3.12 \
	  --python-platform x86_64-manylinux_2_28 --no-header -o constraints-py312.txt

image:
	docker build -f 0.llm-foundry.Dockerfile -t "$(IMAGE_TAG)" \
	  --build-arg BASE_IMAGE="$(BASE_IMAGE)" --build-arg SUITE_VERSION="$(VERSION)" \
	  --build-arg LLMFOUNDRY_VERSION="$$(sed -n 's/.*"llm-foundry==\([^"]*\)".*/\1/p' pyproject.toml)" \
	  --build-arg STREAMING_VERSION="$$(sed -n 's/.*"mosaicml-streaming==\([^"]*\)".*/\1/p' pyproject.toml)" .

sqsh:
	enroot import -o "$(SQSH)" "dockerd://$(IMAGE_TAG)"

base-digest:
	docker buildx imagetools inspect "$(BASE_IMAGE)" --format '{{json .Manifest.Digest}}'

clean:
	rm -rf "$(DEMO_DIR)" .pytest_cache .mypy_cache .ruff_cache

# On a GPU machine, with its own python3 and torch and no `make install` (docs/container.md, "GPU smoke test"):
# one line per claim, exit 1 when one fails. GPU_SMOKE_PYTHON=.venv/bin/python after `make install`.
GPU_SMOKE_PYTHON ?= python3
GPU_SMOKE_ARGS ?=
gpu-smoke:
	$(GPU_SMOKE_PYTHON) -m test_case.gpu_smoke $(GPU_SMOKE_ARGS)
