#!/usr/bin/env bash
# Acceptance sweep, from a login node: a preflight on the largest node count, then one training job
# per (model, node count) that starts only if the preflight passed; then `python report.py logs/`
# gives one PASS or FAIL with every reason (docs/acceptance.md, "Acceptance sweep").
#   slurm-scripts/3.acceptance.sh --models mpt-1b,mpt-7b --nodes 1,2,4,8 [--no-preflight] \
#       [--tolerance 0.10] [--scaling-threshold 0.90] [--weak|--strong] [--parallel] \
#       [--override KEY=VALUE ...] [--gpu-type GPU [--published-config]] [--log-dir DIR] [--dry-run] \
#       [-- SBATCH OPTIONS]
# The plan, the batch sizes and the manifest are Python (test_case/acceptance/); this is glue.
set -euo pipefail
SCRIPT=3.acceptance
# shellcheck source=slurm-scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"   # --help, ROOT, the settings
exec python -m test_case.acceptance submit "$@"
