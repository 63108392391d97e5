# shellcheck shell=bash
# Shared environment of the sbatch scripts: sourced, never run. Every value can be overridden by
# exporting it before `sbatch` / `bash` (sbatch passes the submitting shell's environment on).
# Expects ROOT (the repository root) and SCRIPT (the calling script's name, for messages) to be set.

: "${ROOT:?env.sh needs ROOT, the repository root}"
SCRIPT="${SCRIPT:-slurm-scripts}"

# Every error of the scripts has one form, as the Python commands print theirs:
#   <script>: error: <what is wrong>: <what to do>
# and exits 2 (a configuration mistake, not a training failure).
die() {
  echo "$SCRIPT: error: $*" >&2
  exit 2
}
export ROOT
export LOG_DIR="${LOG_DIR:-$ROOT/logs}"
export DATA_ROOT="${DATA_ROOT:-$ROOT/data/my-copy-c4}"     # MDS dataset root (shared storage on a cluster)
export SAVE_ROOT="${SAVE_ROOT:-$ROOT/checkpoints}"         # checkpoints: <SAVE_ROOT>/<run-name>/checkpoints
export VENV="${VENV:-$ROOT/.venv}"                         # bare-metal mode: the suite's virtual environment
# Container mode (pyxis/enroot): IMAGE is the .sqsh to run in. Unset: $ROOT/llm-foundry.sqsh when
# `make image sqsh` has written it, else BUNDLE's when the bundle holds one, else bare metal. Set to a
# path: it must exist. Set empty: bare metal.
if [[ -z "${IMAGE+set}" ]]; then
  IMAGE=""
  if [[ -f "$ROOT/llm-foundry.sqsh" ]]; then
    IMAGE="$ROOT/llm-foundry.sqsh"
  elif [[ -n "${BUNDLE:-}" && -f "$BUNDLE/container/llm-foundry.sqsh" ]]; then
    IMAGE="$BUNDLE/container/llm-foundry.sqsh"   # an air-gapped cluster's bundle (below)
  fi
fi
export IMAGE
export CONTAINER_MOUNTS="${CONTAINER_MOUNTS:-$ROOT:$ROOT}"  # add DATA_ROOT/SAVE_ROOT when outside ROOT, e.g. /fsx:/fsx

# srun's pyxis flags for the tasks, in the array CONTAINER_ARGS: empty on bare metal, else the image,
# the mounts and the repository as the working directory. A .sqsh that is not there stops the job
# before any task starts. Called under Slurm only (outside it nothing runs in a container).
# shellcheck disable=SC2034  # CONTAINER_ARGS is read by the scripts that source this file
container_args() {
  CONTAINER_ARGS=()
  [[ -n "$IMAGE" ]] || return 0
  if [[ "$IMAGE" == *.sqsh && ! -f "$IMAGE" ]]; then
    die "IMAGE=$IMAGE does not exist: build and import it first (docs/container.md, 'Container image'), or set IMAGE= for the venv"
  fi
  CONTAINER_ARGS=(--container-image="$IMAGE" --container-mounts="$CONTAINER_MOUNTS" --container-workdir="$ROOT")
}

# Bare-metal mode: use the suite's venv when there is one (a container brings its own Python).
if [[ -z "$IMAGE" && -f "$VENV/bin/activate" && "${VIRTUAL_ENV:-}" != "$VENV" ]]; then
  # shellcheck disable=SC1091
  source "$VENV/bin/activate"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

# Air-gapped clusters (docs/airgap.md, "Air-gapped clusters"): BUNDLE is a folder `make bundle` wrote. With it
# nothing asks the Hugging Face hub, TOKENIZER defaults to the bundle's tokenizer and C4_INPUT to its
# C4 files. A BUNDLE without its manifest, or without a tokenizer when TOKENIZER is unset, stops here.
if [[ -n "${BUNDLE:-}" ]]; then
  export BUNDLE HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
  if [[ -z "${TOKENIZER:-}" ]]; then
    TOKENIZER="$(python3 -m test_case.bundle tokenizer "$BUNDLE")" || die "BUNDLE=$BUNDLE: no tokenizer to use (the line above says why)"
    export TOKENIZER
  fi
  if [[ -z "${C4_INPUT:-}" && -d "$BUNDLE/c4" ]]; then export C4_INPUT="$BUNDLE/c4"; fi
fi

# NCCL over EFA (AWS). Harmless on CPU runs, which use gloo and never load NCCL.
# The libfabric provider aws-ofi-nccl uses: the EFA device, on nodes with the efa kernel module. On
# InfiniBand or RoCE clusters NCCL uses its own transport and FI_PROVIDER stays unset.
if [[ -z "${FI_PROVIDER:-}" && -d /sys/module/efa ]]; then export FI_PROVIDER=efa; fi
export FI_EFA_USE_DEVICE_RDMA="${FI_EFA_USE_DEVICE_RDMA:-1}"   # GPUDirect RDMA (p4d/p5)
export FI_EFA_FORK_SAFE="${FI_EFA_FORK_SAFE:-1}"           # dataloader workers fork: keep libfabric safe
export FI_EFA_USE_HUGE_PAGE="${FI_EFA_USE_HUGE_PAGE:-0}"   # avoid huge-page exhaustion with many ranks
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"  # was NCCL_ASYNC_ERROR_HANDLING
