#!/usr/bin/env bash
# Slurm's HealthCheckProgram, Prolog or Epilog: this node's quick health scan (python3 -m
# test_case.health: kernel log XIDs, PCIe, InfiniBand, NVLink, /dev/shm, GPU identity) on the host,
# outside any container or venv (standard library only, python3 -S), within the 60 s slurmd gives
# it. A node that needs a GPU reset, a reboot or a drain, confirmed by a second scan, is drained with
# the finding as its reason (never one already drained or down; never resumed from here) and the
# exit code is 1: as Prolog, Slurm requeues the job (held unless SchedulerParameters has
# nohold_on_prolog_fail); as Epilog, Slurm drains the node too. slurm.conf lines and
# what each does: docs/preflight.md, "Health checks in Slurm". Arguments go to the scan, e.g.
#   slurm-scripts/health-check.sh --confirm-after 10
set -euo pipefail
# slurmd starts it with almost no environment: bash's default PATH finds python3 and scontrol
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
exec timeout 55 python3 -S -m test_case.health --drain "$@"
