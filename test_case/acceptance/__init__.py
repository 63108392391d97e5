"""Acceptance sweeps: a preflight, then the model ladder at several node counts (`slurm-scripts/3.acceptance.sh`)."""
