"""The mixture proof on a real 2-node Slurm cluster (tests/local_slurm.py).

A SlimPajama-shaped sample (zstd JSON lines whose documents carry ``meta.redpajama_set_name``, two
domains) is preprocessed by ``1.c4-preprocess.sbatch`` on both nodes with ``DOMAIN_FIELD``; the tiny
MPT then trains on both nodes on a 70/30 mixture of the two domains (``MIXTURE=mix.yaml``), with an
eval loader per domain. The report must give both domains' eval losses, and the samples training
drew from each domain, counted on every rank by the ``stream_draws`` callback from the dataset's own
sample-to-stream mapping, must match 70/30 within sampling error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_case.report.log_reading import parse_log_file
from test_case.report.metrics import summarise_run
from test_case.timing_events import StreamDraws
from tests.conftest import DOMAINS, REPO_ROOT, write_domain_sample
from tests.local_slurm import LocalSlurmCluster

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

BATCHES = 24  # of 16 samples: 384 drawn, a sampling error of 2.3 points on 70/30
GLOBAL_BATCH = 16  # mpt-tiny-cpu's global_train_batch_size


def sbatch_and_wait(
    cluster: LocalSlurmCluster, logs: Path, args: list[str], env: dict[str, str], log_name: str
) -> None:
    job = cluster.sbatch([f"--output={logs}/%x_%j.out", "--nodes=2", *args], cwd=REPO_ROOT, env=env)
    info = cluster.wait(job, timeout=600)
    text = (logs / log_name.format(job=job)).read_text()
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), text[-4000:]


@pytest.fixture(scope="module")
def mixture_run(
    cluster: LocalSlurmCluster, demo_assets: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """(data root, logs folder) of the preprocessing and the 70/30 training, both completed."""
    root = tmp_path_factory.mktemp("mixture-slurm")
    logs, data = root / "logs", root / "data"
    logs.mkdir()
    write_domain_sample(demo_assets[0], root / "slimpajama")
    base = {"PATH": os.environ["PATH"], "DATA_ROOT": str(data), "TOKENIZER": str(demo_assets[1])}
    for split, folder in (("train", "train"), ("validation", "validation")):
        env = base | {
            "C4_INPUT": str(root / "slimpajama" / folder),
            "SPLITS": split,
            "DOMAIN_FIELD": "meta.redpajama_set_name",
            "CONCAT_TOKENS": "128",
            "WORKERS": "1",
        }
        sbatch_and_wait(cluster, logs, ["slurm-scripts/1.c4-preprocess.sbatch"], env, "c4-preprocess_{job}.out")
    mix = root / "mix.yaml"
    mix.write_text(
        f"""# SlimPajama-style: 70 % C4, 30 % Wikipedia, each with its own eval loader
streams:
  c4:
    local: data/train/{DOMAINS[0]}
    proportion: 0.7
    eval: data/validation/{DOMAINS[0]}
  wikipedia:
    local: data/train/{DOMAINS[1]}
    proportion: 0.3
    eval: data/validation/{DOMAINS[1]}
"""
    )
    env = base | {"MIXTURE": str(mix), "SAVE_ROOT": str(root / "ckpt")}
    args = ["slurm-scripts/2.train-mpt-manual-distributed.sbatch", "mpt-tiny-cpu"]
    args += [f"max_duration={BATCHES}ba", f"eval_interval={BATCHES}ba", "save_interval=1000ba"]
    sbatch_and_wait(cluster, logs, args, env, "mpt-train_{job}.out")
    return data, logs


def test_the_preprocessing_job_writes_one_dataset_per_domain(mixture_run: tuple[Path, Path]) -> None:
    data, _ = mixture_run
    for split in ("train", "validation"):
        summary = json.loads((data / split / "summary.json").read_text())
        assert set(summary["domains"]) == set(DOMAINS)
        c4, wiki = (summary["domains"][d]["documents_written"] for d in DOMAINS)
        assert c4 + wiki == summary["documents_written"] and 0.25 < wiki / (c4 + wiki) < 0.35  # 3 in 10
        for domain in DOMAINS:
            assert (data / split / domain / "index.json").is_file()


def test_training_on_two_nodes_draws_70_30_and_reports_each_domains_eval_loss(
    mixture_run: tuple[Path, Path], tmp_path: Path
) -> None:
    _, logs = mixture_run
    (log,) = logs.glob("mpt-train_*.out")
    parsed = parse_log_file(log)
    assert parsed.header.mixture is not None and parsed.header.mixture.startswith("c4=0.7 wikipedia=0.3")
    assert parsed.header.world_size == 2
    draws = [e for _, e in parsed.timing_events if isinstance(e, StreamDraws)]
    assert draws and draws[-1].batch == BATCHES and draws[-1].names == ["c4", "wikipedia"]
    # no loader workers in the CPU yaml: exactly the samples trained on, both ranks' counts added
    assert sum(draws[-1].drawn) == BATCHES * GLOBAL_BATCH
    run = summarise_run(parsed)
    shares = {s.name: s for s in run.stream_shares}
    assert shares["c4"].planned == pytest.approx(0.7, abs=0.005)
    assert shares["wikipedia"].planned == pytest.approx(0.3, abs=0.005)
    for s in shares.values():
        assert abs(s.drawn - s.planned) <= 3 * s.sampling_error, s
    assert set(run.eval_loss_by_domain) == {"c4", "wikipedia"}
    assert all(2 < v < 12 for v in run.eval_loss_by_domain.values())
    report = subprocess.run(
        [sys.executable, "report.py", str(logs), "--out", str(tmp_path / "report")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert report.returncode == 0, report.stderr
    assert "eval loss by domain" in report.stdout and "within 3 sampling errors" in report.stdout
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "## Eval loss by domain" in markdown and "## Drawn by stream" in markdown
    print(next(line for line in report.stdout.splitlines() if line.startswith("drawn by stream")))
