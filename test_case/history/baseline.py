"""The cluster's own baseline as rows of the published table's shape, so that a run is judged against
its own past with the same matching of configurations as the published gate
(`test_case.report.compare.compare_to_baseline`): ``python report.py --own-baseline STORE``.

A row stands for one configuration the cluster ran (`configuration.key`: the published gate's columns
and the global batch), with the median tokens/s per GPU and MFU of its last ``last_n`` runs that
passed (completed, no straggler, not below a published row; a job's last start), leaving out the
jobs being judged (a report run again after ``--store`` must not compare a run with itself).
"""

from __future__ import annotations

import statistics
from collections.abc import Collection
from typing import Any

from test_case.history import configuration
from test_case.history.store import Store
from test_case.published_runs import BaselineRow


def own_baseline_rows(
    store: Store, cluster: str, last_n: int = 10, exclude_jobs: Collection[str] = ()
) -> tuple[list[BaselineRow], dict[tuple[str, str, int], int]]:
    """The rows, and per (gpu, model, GPU count) how many passing runs each row's median stands on."""
    last: dict[str, dict[str, Any]] = {}
    for row in store.rows("runs", cluster):
        if row["job_id"] in exclude_jobs:
            continue
        if row["job_id"] not in last or row["start"] > last[row["job_id"]]["start"]:
            last[row["job_id"]] = row
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in sorted(last.values(), key=lambda r: (r["started_at"] or "", r["job_id"])):
        if row["passed"] and row["tokens_per_sec_per_device"] is not None and (key := configuration.key(row["record"])):
            groups.setdefault(key, []).append(row)
    rows: list[BaselineRow] = []
    counts: dict[tuple[str, str, int], int] = {}
    for key, runs in groups.items():
        runs = runs[-last_n:]
        gpu, model, n_gpus, seq, batch, precision, micro, ckpt, sharding, mp = key
        mfus = [r["mfu"] for r in runs if r["mfu"] is not None]
        rows.append(
            BaselineRow(
                gpu=gpu,
                model=model,
                seq_len=seq,
                n_gpus=n_gpus,
                global_batch_size=batch,
                precision=precision,
                mfu_pct=100 * statistics.median(mfus) if mfus else 0.0,
                tokens_per_sec_per_gpu=statistics.median(r["tokens_per_sec_per_device"] for r in runs),
                microbatch=micro,
                activation_checkpointing=ckpt,
                sharding_strategy=sharding,
                mp_mode=mp,
            )
        )
        counts[(gpu, model, n_gpus)] = max(counts.get((gpu, model, n_gpus), 0), len(runs))
    return rows, counts
