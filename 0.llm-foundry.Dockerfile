# Container image of the MPT Slurm benchmark suite: llm-foundry + flash-attn + EFA/NCCL + nccl-tests.
#
# Base: MosaicML's llm-foundry image, AWS variant. It already carries what must match the GPU stack:
# torch 2.7.0 built for CUDA 12.8, flash-attn (a source build that takes hours otherwise), NCCL, and
# EFA with aws-ofi-nccl and OpenMPI (the "_aws" variant); it does not carry llm-foundry itself. Nothing
# it provides is rebuilt here (the reference test case rebuilt NCCL and aws-ofi-nccl, and failed on a
# "vv2.27.5-1" branch name). The tag is the most specific one we can name without inventing a digest;
# pin it by digest for reproducible builds: `make base-digest` prints it (docs/container.md, "Container image").
ARG BASE_IMAGE=mosaicml/llm-foundry:2.7.0_cu128_aws-latest
FROM ${BASE_IMAGE}

# nccl-tests, a release of github.com/NVIDIA/nccl-tests: cloned by its tag, then its commit checked.
ARG NCCL_TESTS_VERSION=v2.19.6
ARG NCCL_TESTS_COMMIT=a0b82b2260cf5152b9f8c061bbf7eaf0ba096432
# The GPUs it is built for: A100 (sm_80), H100/H200 (sm_90), B200/GB200 (sm_100), and PTX of sm_100
# for newer ones. nccl-tests' own default for CUDA 12.8 also builds sm_60-70 and sm_120 (slower, unused).
ARG NCCL_TESTS_GENCODE="-gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90,code=sm_90 -gencode=arch=compute_100,code=sm_100 -gencode=arch=compute_100,code=compute_100"
# Versions for the labels, passed by `make image` from pyproject.toml (one source of truth).
ARG SUITE_VERSION=unknown
ARG LLMFOUNDRY_VERSION=unknown
ARG STREAMING_VERSION=unknown

LABEL org.opencontainers.image.title="mpt-slurm-bench" \
      org.opencontainers.image.description="MPT pretraining benchmark suite for Slurm GPU clusters" \
      org.opencontainers.image.version="${SUITE_VERSION}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      mpt-suite.llm-foundry.version="${LLMFOUNDRY_VERSION}" \
      mpt-suite.streaming.version="${STREAMING_VERSION}" \
      mpt-suite.nccl-tests.version="${NCCL_TESTS_VERSION}" \
      mpt-suite.nccl-tests.commit="${NCCL_TESTS_COMMIT}"

# The base's Python 3.12 is /composer-python/python, put on PATH only by /etc/profile, which bash
# reads through BASH_ENV (mosaicml/composer docker/Dockerfile, "Use the correct python version").
# enroot builds the container's environment from the image's Env alone and pyxis execs the srun
# command with no shell, so without this line `python` is not found there and `python3` is
# Ubuntu's 3.10, which has none of the packages. Docker's RUN goes through bash: it found it anyway.
ENV PATH="/composer-python:${PATH}"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The base must be what the pins expect: torch 2.7.0 with CUDA, flash-attn with ALiBi (>= 2.4.2).
RUN python3 -c "import torch; assert torch.__version__.startswith('2.7.0'), torch.__version__; \
assert torch.version.cuda, 'torch without CUDA'; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
 && python3 -c "import flash_attn; from packaging.version import Version as V; \
assert V(flash_attn.__version__) >= V('2.4.2'), flash_attn.__version__; print('flash-attn', flash_attn.__version__)"

# nccl-tests with MPI when the base has Amazon's OpenMPI (multi-node runs under srun --mpi=pmix).
RUN git clone --quiet --depth 1 --branch "${NCCL_TESTS_VERSION}" https://github.com/NVIDIA/nccl-tests.git /opt/nccl-tests \
 && test "$(git -C /opt/nccl-tests rev-parse HEAD)" = "${NCCL_TESTS_COMMIT}" \
 && mpi=(MPI=0) \
 && if [ -d /opt/amazon/openmpi ]; then mpi=(MPI=1 MPI_HOME=/opt/amazon/openmpi); fi \
 && make -C /opt/nccl-tests -j"$(nproc)" "${mpi[@]}" CUDA_HOME=/usr/local/cuda NVCC_GENCODE="${NCCL_TESTS_GENCODE}" \
 && rm -rf /opt/nccl-tests/.git

# The suite, installed with the project's own lock for this Python (constraints-py312.txt, made by
# `make lock` from pyproject.toml). The CUDA stack (torch, torchvision, triton, nvidia-*) is the
# base's: its lines are dropped from the constraints, and the check above proved torch is 2.7.0.
WORKDIR /opt/mpt-suite
COPY pyproject.toml constraints-py312.txt README.md report.py ./
COPY preprocessing/ preprocessing/
COPY test_case/ test_case/
COPY slurm-scripts/ slurm-scripts/
COPY yamls/ yamls/
COPY reference/ reference/
RUN grep -vE '^(torch|torchvision|triton|nvidia-[a-z0-9-]+)==' constraints-py312.txt > /tmp/constraints-image.txt \
 && python3 -m pip install --no-cache-dir -c /tmp/constraints-image.txt . \
 && rm /tmp/constraints-image.txt

ENV PATH="/opt/nccl-tests/build:${PATH}" \
    PYTHONUNBUFFERED=1 \
    SUITE_DIR=/opt/mpt-suite

# What the sbatch scripts run inside the container must work (tests/test_container.py keeps this
# list in step with the scripts).
RUN python --version \
 && python -m preprocessing --help > /dev/null \
 && python -m test_case.training.launch --help > /dev/null \
 && python -m test_case.training.restarts --help > /dev/null \
 && python -m test_case.preflight --help > /dev/null \
 && python report.py --help > /dev/null \
 && composer --help > /dev/null \
 && llmfoundry --help > /dev/null \
 && test -x /opt/nccl-tests/build/all_reduce_perf
# ... and as pyxis starts them: no shell, so no BASH_ENV, only the image's Env (the exec form of RUN).
RUN ["python", "-c", "import sys, composer, llmfoundry, preprocessing, test_case; print('python without a shell:', sys.executable, sys.version.split()[0])"]
