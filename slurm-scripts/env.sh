# shellcheck shell=bash
# Shared steps and environment of the scripts in slurm-scripts/: sourced, never run. Every value can
# be overridden by exporting it before `sbatch` / `bash` (sbatch passes the submitting shell's
# environment on). Expects SCRIPT (the calling script's name, for messages and --help).
#
# A script finds this file before anything else, in the few lines each one starts with: Slurm runs a
# copy of the batch script (from its spool folder), so under Slurm the suite is SUITE_ROOT, else the
# submit directory or the one above it (submitted from slurm-scripts/); without Slurm, the folder
# above the script. From here on the suite is where this file is.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPT="${SCRIPT:-slurm-scripts}"
# --help: what the script does and every setting it reads, with no side effect (no log, no job):
# `source` without arguments passes on the script's own
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
  for script_file in "$ROOT/slurm-scripts/$SCRIPT".{sbatch,sh}; do
    if [[ -f "$script_file" ]]; then PYTHONPATH="$ROOT" exec python3 -m test_case.settings "$script_file"; fi
  done
fi

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
cd "$ROOT" || die "cannot enter the suite at $ROOT"
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

# The job's first and last lines, one format for every script (test_case/job_lines.py reads them):
#   [2026-12-05T15:07:48.123+00:00] job 42 start 0 on node[1-2]
#   [2026-12-05T15:09:02.456+00:00] job 42 end: exit code 143 (stopped by SIGTERM) after 74 s
# Times to the millisecond: the report's goodput splits a job's wall time between these lines. Bash,
# not the suite's Python: a batch script runs on the host, where that Python may not be (IMAGE).
# `job_start` writes the start line of JOB_ID and sets the traps that write the end line once: at any
# exit (its exit code), and at SIGTERM or SIGINT (scancel, requeue, preemption, the time limit,
# Ctrl-C), after which the script dies of that signal, as it would without the trap, so Slurm's
# accounting is unchanged. A script may write the end line itself first (`job_end CODE WHY`).
job_stamp() { date +%Y-%m-%dT%H:%M:%S.%3N%:z; }
job_ended=""
kill_wait=30   # seconds Slurm waits between its SIGTERM and its SIGKILL: the end line's deadline
job_start() {
  if [[ -n "${SLURM_JOB_ID:-}" ]]; then
    kill_wait="$(scontrol show config 2>/dev/null | sed -n 's/^KillWait *= *\([0-9]*\).*/\1/p' || true)"
    kill_wait="${kill_wait:-30}"
  fi
  echo "[$(job_stamp)] job ${JOB_ID} start ${SLURM_RESTART_COUNT:-0} on ${SLURM_JOB_NODELIST:-$(hostname)}"
  trap 'job_end "$?"' EXIT
  trap 'job_stopped_by TERM' TERM
  trap 'job_stopped_by INT' INT
}
job_end() {
  if [[ -n "$job_ended" ]]; then return 0; fi
  job_ended=1
  echo "[$(job_stamp)] job ${JOB_ID} end: exit code $1${2:+ ($2)} after ${SECONDS} s"
}
# shellcheck disable=SC2329  # called by the traps of job_start
job_stopped_by() {
  # A running step (the script's srun_pid) got the signal too (scancel signals every step): its last
  # lines, the ranks' tracebacks, come before the end line, not after it. Up to 2 s short of Slurm's
  # KillWait (after which it kills this script too, end line or not); srun's own last words may follow.
  for _ in $(seq 1 "$(( kill_wait > 3 ? (kill_wait - 2) * 5 : 5 ))"); do
    if [[ -z "${srun_pid:-}" ]] || ! kill -0 "$srun_pid" 2>/dev/null; then break; fi
    sleep 0.2
  done
  job_end "$(( 128 + $(kill -l "$1") ))" "stopped by SIG$1"
  trap - "$1" EXIT
  kill -s "$1" "$$"
}
