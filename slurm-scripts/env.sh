# shellcheck shell=bash
# Shared environment of the sbatch scripts: sourced, never run. Every value can be overridden by
# exporting it before `sbatch` / `bash` (sbatch passes the submitting shell's environment on).
# Expects ROOT (the repository root) to be set by the caller.

: "${ROOT:?env.sh needs ROOT, the repository root}"
export ROOT
export LOG_DIR="${LOG_DIR:-$ROOT/logs}"
export DATA_ROOT="${DATA_ROOT:-$ROOT/data/my-copy-c4}"     # MDS dataset root (shared storage on a cluster)
export SAVE_ROOT="${SAVE_ROOT:-$ROOT/checkpoints}"         # checkpoints: <SAVE_ROOT>/<run-name>/checkpoints
export VENV="${VENV:-$ROOT/.venv}"                         # bare-metal mode: the suite's virtual environment
# Container mode (pyxis/enroot): IMAGE is the .sqsh to run in. Unset: $ROOT/llm-foundry.sqsh when
# `make image sqsh` has written it, else bare metal. Set to a path: it must exist. Set empty: bare metal.
if [[ -z "${IMAGE+set}" ]]; then
  IMAGE=""
  if [[ -f "$ROOT/llm-foundry.sqsh" ]]; then IMAGE="$ROOT/llm-foundry.sqsh"; fi
fi
export IMAGE
export CONTAINER_MOUNTS="${CONTAINER_MOUNTS:-$ROOT:$ROOT}"  # add DATA_ROOT/SAVE_ROOT when outside ROOT, e.g. /fsx:/fsx

# Bare-metal mode: use the suite's venv when there is one (a container brings its own Python).
if [[ -z "$IMAGE" && -f "$VENV/bin/activate" && "${VIRTUAL_ENV:-}" != "$VENV" ]]; then
  # shellcheck disable=SC1091
  source "$VENV/bin/activate"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

# NCCL over EFA (AWS). Harmless on CPU runs, which use gloo and never load NCCL.
export FI_PROVIDER="${FI_PROVIDER:-efa}"                   # libfabric provider: the EFA device
export FI_EFA_USE_DEVICE_RDMA="${FI_EFA_USE_DEVICE_RDMA:-1}"   # GPUDirect RDMA (p4d/p5)
export FI_EFA_FORK_SAFE="${FI_EFA_FORK_SAFE:-1}"           # dataloader workers fork: keep libfabric safe
export FI_EFA_USE_HUGE_PAGE="${FI_EFA_USE_HUGE_PAGE:-0}"   # avoid huge-page exhaustion with many ranks
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"  # was NCCL_ASYNC_ERROR_HANDLING
