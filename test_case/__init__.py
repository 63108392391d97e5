"""Harness of the MPT Slurm benchmark suite. Where things live:

==========================  ====================================================================
``run_header``              the run header: the one contract between training and the report
``gpu_peaks``               GPU names -> peak TFLOP/s, the denominator of MFU (shared)
``published_runs``          llm-foundry's published runs, read once for the report and the launch
``job_lines``               the job's start and end lines (written by env.sh), parsed once
``training/``               what a training job runs on each node
  ``node_plan``             Slurm facts -> one node's plan (the lowest layer of a start)
  ``run_config``            the yaml with the suite's and the user's overrides, checked
  ``start_checks``          what would fail later, found before any rank starts
  ``launch``                the command on each node: plan, check, run header, exec Composer
  ``checkpoints``           resume from the newest complete checkpoint after a kill during a save
  ``foundry_train``         ``llmfoundry train`` with the per-node signal-file fix (Composer's entry)
``report/``                 ``python report.py``: logs -> figures -> tables, files and plots
  ``log_lines``             what each line of a Composer log means (each line form defined once)
  ``log_reading``           reads a large log fast (block shapes, worker processes), same result
  ``metrics``               every per-run figure (the only module doing per-run arithmetic)
  ``compare``               across runs: scaling efficiency, the published-baseline gate
  ``figures``               the table of figures: unit, formula, the function computing each
  ``records``               the report's typed records (what report.json holds; ``Report``: all of it)
  ``sections``, ``layout``  each section written once; laid out for the console and report.md
  ``render``, ``plots``     one Report per output: console, report.md/csv/json; PNGs (format only)
  ``cli``                   the command line: find logs, group runs, call the above
``demo/``                   offline demo inputs: a C4-format sample and a small BPE tokenizer
==========================  ====================================================================

``training`` and ``report`` never import each other; both use ``run_header`` and the shared
modules above. ``preprocessing``
(a sibling package) tokenizes corpora into MDS shards.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent  # yamls/, reference/, slurm-scripts/ live here
