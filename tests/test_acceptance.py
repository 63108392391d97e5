"""Acceptance sweeps without Slurm: the plan (batch sizes, dependencies), the manifest, the verdict.

The verdict is judged on real logs of the local Slurm cluster (``tests/data``): a run with node2 at
a quarter of a core (a straggler) and a run requeued after ``kill -9`` (a restart), against a
manifest that also lists a job that never ran.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from test_case.acceptance.cli import main as acceptance_main
from test_case.acceptance.manifest import SweepJob, SweepManifest
from test_case.acceptance.plan import PlanError, dependency_option, parse_nodes, plan_sweep
from test_case.published_runs import DEFAULT_BASELINE, load_baseline
from test_case.report.cli import main as report_main
from test_case.report.compare import scaling_groups
from test_case.report.log_reading import parse_log_file
from test_case.report.metrics import summarise_run
from test_case.report.records import JobWithoutTraining, RunSummary
from test_case.report.verdict import judge_sweep

DATA = Path(__file__).parent / "data"


def test_weak_scaling_keeps_the_batch_per_gpu_and_every_job_waits_for_the_preflight() -> None:
    subs = plan_sweep(["mpt-tiny-cpu", "mpt-7b"], [1, 2, 4], log_dir="L", sbatch_args=["--partition=p5"])
    assert [(s.kind, s.model, s.nodes, s.global_train_batch_size) for s in subs] == [
        ("preflight", None, 4, None),
        ("train", "mpt-tiny-cpu", 1, 16),
        ("train", "mpt-tiny-cpu", 2, 32),
        ("train", "mpt-tiny-cpu", 4, 64),
        ("train", "mpt-7b", 1, 1024),
        ("train", "mpt-7b", 2, 2048),
        ("train", "mpt-7b", 4, 4096),
    ]
    assert subs[0].sbatch_options == ["--nodes=4", "--output=L/%x_%j.out", "--partition=p5"]
    ids = ["10", "11", "12"]
    assert dependency_option(subs[1], ids) == ["--dependency=afterok:10", "--kill-on-invalid-dep=yes"]
    assert dependency_option(subs[2], ids) == ["--dependency=afterok:10,afterany:11", "--kill-on-invalid-dep=yes"]
    assert subs[2].script_args == ["mpt-tiny-cpu", "global_train_batch_size=32"]


def test_strong_scaling_parallel_jobs_and_no_preflight() -> None:
    subs = plan_sweep(
        ["mpt-tiny-cpu"], [2, 4], "strong", preflight=False, parallel=True, overrides=["max_duration=9ba"]
    )
    assert [(s.nodes, s.global_train_batch_size, s.after_ok, s.after_any) for s in subs] == [
        (2, 16, None, None),
        (4, 16, None, None),
    ]
    assert subs[1].script_args == ["mpt-tiny-cpu", "global_train_batch_size=16", "max_duration=9ba"]
    assert dependency_option(subs[0], []) == []


def test_a_sweep_whose_global_batch_a_node_count_cannot_share_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(PlanError, match=r"^mpt-tiny-cpu on 3 node\(s\): global_train_batch_size=16 is not divisible"):
        plan_sweep(["mpt-tiny-cpu"], [1, 3], "strong")
    assert (
        acceptance_main(
            ["submit", "--models", "mpt-7b", "--nodes", "1,3", "--strong", "--dry-run", "--", "--gpus-per-node=8"]
        )
        == 2
    )
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("3.acceptance: error: mpt-7b on 3 node(s): global_train_batch_size=1024 is not divisible by")
    assert [s.nodes for s in plan_sweep(["mpt-tiny-cpu"], [1, 2, 4], "strong", ranks_per_node=2)] == [4, 1, 2, 4]


@pytest.mark.parametrize(
    ("models", "nodes", "message"),
    [
        (["mpt-tiny-cpu"], "2,3", "every node count must be a multiple of the smallest (2); 3 is not"),
        (["mpt-nope"], "1,2", "no yaml for model 'mpt-nope'"),
    ],
)
def test_a_sweep_that_cannot_be_planned_says_what_to_change(models: list[str], nodes: str, message: str) -> None:
    with pytest.raises(PlanError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_sweep(models, parse_nodes(nodes))


@pytest.mark.parametrize("text", ["", "1,,2", "0,1", "1,1", "a"])
def test_bad_node_lists_are_refused(text: str) -> None:
    with pytest.raises(PlanError):
        parse_nodes(text)


def test_submission_writes_a_manifest_with_every_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    submitted: list[list[str]] = []

    def sbatch(argv: list[str]) -> str:  # stands in for Slurm's sbatch: records, returns job ids
        submitted.append(argv)
        return str(40 + len(submitted))

    argv = ["submit", "--models", "mpt-tiny-cpu", "--nodes", "1,2", "--log-dir", str(tmp_path), "--strong"]
    assert acceptance_main([*argv, "--override", "max_duration=9ba", "--", "--partition=cpu"], submit=sbatch) == 0
    assert submitted[2][:2] == ["--nodes=2", f"--output={tmp_path}/%x_%j.out"]
    assert "--dependency=afterok:41,afterany:42" in submitted[2]
    manifest = SweepManifest.read(tmp_path / "acceptance_41.json")
    assert (manifest.sweep_id, manifest.preflight_job_id, manifest.scaling, manifest.nodes) == (
        "41",
        "41",
        "strong",
        [1, 2],
    )
    assert [(j.kind, j.job_id, j.nodes, j.depends_on) for j in manifest.jobs] == [
        ("preflight", "41", 2, []),
        ("train", "42", 1, ["41"]),
        ("train", "43", 2, ["41", "42"]),
    ]
    assert manifest.jobs[2].overrides == ["global_train_batch_size=16", "max_duration=9ba"]
    assert manifest.sbatch_args == ["--partition=cpu"]
    assert f"python report.py {tmp_path}" in capsys.readouterr().out
    assert acceptance_main(["submit", "--models", "mpt-tiny-cpu", "--nodes", "1,0"], submit=sbatch) == 2


def unzipped(name: str, folder: Path) -> Path:
    path = folder / name.removesuffix(".gz")
    path.write_bytes(gzip.decompress((DATA / name).read_bytes()))
    return path


def test_the_verdict_names_the_straggler_the_restart_and_the_job_that_never_ran(tmp_path: Path) -> None:
    throttled = unzipped("slurm-3node-node2-quarter-core.out.gz", tmp_path)  # job 3, 2 nodes
    requeued = unzipped("slurm-3node-killed-rank-goodput.out.gz", tmp_path)  # job 4, 2 nodes
    manifest = SweepManifest(
        "3",
        "2026-12-01T19:00:00+00:00",
        ["mpt-tiny-cpu"],
        [2],
        "weak",
        0.1,
        0.9,
        None,
        [
            SweepJob("train", "3", 2, "mpt-tiny-cpu", 16),
            SweepJob("train", "4", 2, "mpt-tiny-cpu", 16),
            SweepJob("train", "99", 4, "mpt-tiny-cpu", 32),
        ],
    )
    runs = [summarise_run(parse_log_file(p)) for p in (throttled, requeued)]
    verdict = judge_sweep(
        manifest,
        runs,
        [],
        [],
        load_baseline(DEFAULT_BASELINE),
        state=lambda job: "PENDING (Resources)" if job == "99" else None,
        slurm_restarts=lambda job: None,
    )
    assert verdict.status == "FAIL" and verdict.nodes == {"node2": "straggler"}
    assert any("job 3 (mpt-tiny-cpu on 2 node(s)): straggler rank 1 on node2" in r for r in verdict.reasons)
    assert any(
        r.startswith("job 4 (mpt-tiny-cpu on 2 node(s)) restarted 1 time(s): start 0 failed on node2")
        for r in verdict.reasons
    )
    assert "job 99 (mpt-tiny-cpu on 4 node(s)) never ran (Slurm: PENDING (Resources))" in verdict.reasons
    jobs = {j.job_id: j for j in verdict.jobs}
    assert jobs["3"].stragglers == ["node2"] and jobs["4"].restarts == 1 and jobs["99"].status == "never ran"
    assert jobs["3"].baseline == "no-match"  # a CPU run: no published row, not judged on it
    # ... and the verdict says so on a line of its own, never a silent pass
    assert "job 3 (mpt-tiny-cpu on 2 node(s)): throughput not compared: no row for gpu=cpu model=mpt-tiny-cpu" in (
        " ".join(verdict.notes)
    )

    # the report finds the manifest beside the logs, prints the verdict and exits 4
    manifest.write(tmp_path)
    assert report_main([str(tmp_path), "--out", str(tmp_path / "out"), "--no-plots"]) == 4
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    assert doc["verdict"]["status"] == "FAIL" and doc["verdict"]["sweep_id"] == "3"
    assert {j["job_id"] for j in doc["verdict"]["jobs"]} == {"3", "4", "99"}
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "## Acceptance verdict" in markdown and "Sweep 3: **FAIL**" in markdown
    assert "- note: job 3 (mpt-tiny-cpu on 2 node(s)): throughput not compared: no row for gpu=cpu" in markdown
    assert doc["verdict"]["notes"] == verdict.notes


def test_usage_mistakes_are_one_line_and_help_shows_the_sbatch_options_and_defaults(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (
        acceptance_main(["submit", "--models", "mpt-tiny-cpu", "--nodes", "1", "--override", "max_durtion=50ba"]) == 2
    )
    assert capsys.readouterr().err == (
        "3.acceptance: error: mpt-tiny-cpu.yaml: llm-foundry has no config key 'max_durtion': did you mean "
        "'max_duration'?\n"
    )

    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch: the real submit function meets it
    args = ["submit", "--models", "mpt-tiny-cpu", "--nodes", "1", "--log-dir", str(tmp_path)]
    assert acceptance_main(args) == 2
    assert capsys.readouterr().err.splitlines() == [
        "3.acceptance: error: sbatch failed: sbatch is not on PATH: run this on a login node of the Slurm cluster, "
        "or see the plan with --dry-run"
    ]
    with pytest.raises(SystemExit) as done:
        acceptance_main(["submit", "--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith("usage: 3.acceptance.sh --models M1,M2 --nodes N1,N2 [options] [-- SBATCH OPTIONS]")
    assert "(default: 0.1)" in shown and "Options after -- go to every sbatch" in shown


def test_a_job_that_did_not_train_shows_the_restarts_and_state_slurm_shows() -> None:
    """Before: restarts 0 and slurm_state None for a job Slurm showed with Restarts=3."""
    manifest = SweepManifest(
        "5", "2026-12-05T12:00:00+00:00", ["mpt-tiny-cpu"], [3], "strong", 0.1, 0.9, None,
        [SweepJob("train", "7", 3, "mpt-tiny-cpu", 16)],
    )  # fmt: skip
    job = JobWithoutTraining("mpt-train_7.out", "7", "[rank0]: ValueError: ...", 40, restarts=1)
    verdict = judge_sweep(
        manifest,
        [],
        [job],
        [],
        load_baseline(DEFAULT_BASELINE),
        state=lambda j: "FAILED (NonZeroExitCode)",
        slurm_restarts=lambda j: 3,
    )
    (record,) = verdict.jobs
    assert (record.status, record.slurm_state, record.restarts) == ("did not train", "FAILED (NonZeroExitCode)", 3)
    assert verdict.reasons == [
        "job 7 (mpt-tiny-cpu on 3 node(s)) did not train (after 3 restart(s)): [rank0]: ValueError: ..."
    ]


def test_the_verdicts_scaling_efficiency_is_the_reports_one_figure() -> None:
    """Before: the verdict kept its own baseline, the first job of the model in (model, nodes) order:
    a slow job at 2 nodes made a faster one at 2 nodes "scale" 4.24x and hid a 4-node job's 50 %."""
    like = {"model": "m", "device_type": "cpu", "precision": "fp32", "max_seq_len": 128, "procs_per_node": 1}
    runs = [
        RunSummary(f"run-{job}", f"{job}.out", job_id=job, status="completed", world_size=nodes, nodes=nodes,
                   global_batch_size=16, scheduler="slurm", tokens_per_sec_per_device=rate, **like)  # type: ignore[arg-type]
        for job, nodes, rate in (("3", 2, 1422.0), ("2", 2, 6024.0), ("12", 4, 3012.0))
    ]  # fmt: skip
    manifest = SweepManifest(
        "2", "2026-12-01T19:00:00+00:00", ["m"], [2, 4], "strong", 0.1, 0.9, None,
        [SweepJob("train", r.job_id or "", r.nodes or 0, "m", 16) for r in runs],
    )  # fmt: skip
    verdict = judge_sweep(manifest, runs, [], [], [], state=lambda j: None, slurm_restarts=lambda j: None)
    efficiency = {j.job_id: j.scaling_efficiency for j in verdict.jobs}
    points = {p.run: p.efficiency for g in scaling_groups(runs) for p in g.points}
    assert efficiency == {"3": None, "2": 1.0, "12": 0.5} and points == {"run-2": 1.0, "run-12": 0.5}
    assert verdict.reasons == [
        "job 12 (m on 4 node(s)): scaling efficiency 0.50 against its smallest node count, below 0.90"
    ]
