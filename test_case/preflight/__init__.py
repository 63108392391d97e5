"""Preflight: node health and fabric checks that name a bad node before a benchmark (0.preflight.sbatch).

``records`` (the JSON), ``expectations`` (published figures, tolerances), ``node_checks`` (one node
about itself), ``fabric`` (matmul and collectives, one worker per device), ``nccl_tests``
(all_reduce_perf's output read into records), ``verdict`` (nodes against each other and the
expectations), ``cli`` (node, worker, verdict).
"""
