"""Will it fit: the per-GPU memory estimate (`test_case.training.memory_fit`) against llm-foundry's
published sweep, `launch check` and the acceptance plan refusing what does not fit, and
``--published-config`` / ``PUBLISHED_CONFIG=1`` running the published configuration.

The calibration is the published sweep itself (reference/llm-foundry-mpt-benchmarks.csv, every row
llm-foundry ran on A100 40/80 GB and H100 80 GB): each of those runs fitted, so each must come out
"fits"; its tightest rows were tuned to the limit, so the estimate must come close to the limit for
them (an estimate far below every row would pass anything).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from test_case.acceptance.cli import main as acceptance_main
from test_case.acceptance.plan import gpu_target, gpus_per_node_of, published_configs
from test_case.published_runs import DEFAULT_BASELINE, load_baseline, published_row
from test_case.training.memory_fit import (
    GIB,
    TrainingShape,
    estimate,
    fit_line,
    gpu_memory_gib,
    memory_of_this_node,
    shape_of,
    smallest_fitting_nodes,
)
from test_case.training.node_plan import NodePlan
from test_case.training.run_config import published_config, training_config
from tests.conftest import REPO_ROOT

GPU_OUTPUTS = REPO_ROOT.parent / "shared" / "gpu-outputs"


def shape(model: str) -> TrainingShape:
    found = shape_of(OmegaConf.load(REPO_ROOT / "yamls" / f"{model}.yaml"))
    assert found is not None
    return found


def test_every_published_run_fits_and_the_tightest_come_close_to_the_limit() -> None:
    rows = load_baseline(DEFAULT_BASELINE)
    assert len(rows) == 216
    shares = []
    for r in rows:
        s = replace(
            shape(r.model),
            seq_len=r.seq_len,
            microbatch=r.microbatch or 1,
            precision=r.precision,
            mixed_precision=r.mp_mode or "DEFAULT",
            sharding=r.sharding_strategy or "FULL_SHARD",
            activation_checkpointing=bool(r.activation_checkpointing),
            global_batch=r.global_batch_size,
        )
        memory = gpu_memory_gib(r.gpu)
        assert memory is not None, r.gpu
        found = estimate(s, r.n_gpus, 8, memory)
        assert found.fits, (r, found.describe())
        shares.append(found.total / found.usable)
    # llm-foundry picked the largest microbatch that ran: the tightest rows sit near the limit
    assert 0.9 < max(shares) <= 1.0, max(shares)


def test_70b_on_the_default_two_nodes_of_80_gb_does_not_fit_and_the_line_says_what_does() -> None:
    seventy = shape("mpt-70b")
    assert 64e9 < seventy.params < 66e9  # MPT-70B: 80 blocks of d_model 8192, vocabulary 50368
    two_nodes = estimate(seventy, 16, 8, 80.0)
    # FULL_SHARD with AdamW: 16 bytes per parameter over 16 GPUs, about 65 GB before activations
    assert two_nodes.model_state == pytest.approx(seventy.params, rel=1e-9)
    assert not two_nodes.fits
    # llm-foundry ran 70B from 32 GPUs of 80 GB up (microbatch 2) and on 64 GPUs at microbatch 8
    assert estimate(replace(seventy, microbatch=2), 32, 8, 80.0).fits
    assert estimate(replace(seventy, microbatch=8), 64, 8, 80.0).fits
    assert smallest_fitting_nodes(seventy, 8, 80.0) == 3
    fits, line = fit_line(seventy, "mpt-70b", 2, 8, "h100-sxm", 80.0)
    assert not fits
    assert line.startswith(
        "mpt-70b does not fit in GPU memory on 2 node(s) x 8 h100-sxm (80 GiB): needs about 79.3 GiB"
    )
    assert "run it on 3 node(s) or more (--nodes=3)" in line and "device_train_microbatch_size=3" in line
    # the same model has room on H200 (141 GB) and the 7B on one node of 40 GB A100s
    assert fit_line(seventy, "mpt-70b", 2, 8, "h200", 141.0)[0]
    assert estimate(shape("mpt-7b"), 8, 8, 40.0).fits


def test_what_changes_the_estimate() -> None:
    seven = shape("mpt-7b")  # microbatch 8, activation checkpointing on, PURE
    base = estimate(seven, 8, 8, 80.0)
    no_checkpointing = estimate(replace(seven, activation_checkpointing=False), 8, 8, 80.0)
    assert no_checkpointing.activations > 10 * base.activations
    assert estimate(replace(seven, microbatch=16), 8, 8, 80.0).activations == pytest.approx(2 * base.activations)
    # a microbatch above the batch per GPU is lowered to it, as llm-foundry does: 1024 over 512 GPUs is 2
    assert estimate(replace(seven, microbatch=2), 512, 8, 80.0).activations == pytest.approx(
        estimate(seven, 512, 8, 80.0).activations
    )
    assert estimate(seven, 16, 8, 80.0).model_state == pytest.approx(base.model_state / 2)
    hybrid = estimate(replace(seven, sharding="HYBRID_SHARD"), 64, 8, 80.0)
    assert hybrid.model_state == pytest.approx(base.model_state)  # sharded within a node only
    lion = estimate(replace(seven, optimizer="decoupled_lionw"), 8, 8, 80.0)
    assert lion.model_state == pytest.approx(base.model_state * 12 / 16)
    torch_loss = estimate(replace(seven, fused_loss=False), 8, 8, 80.0)
    assert torch_loss.logits == pytest.approx(base.logits * 10 / 4)
    tiny = shape("mpt-tiny-cpu")  # fp32 on the CPU, torch's cross-entropy
    assert (tiny.precision, tiny.fused_loss) == ("fp32", False)


def write_tool(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tool = folder / name
    tool.write_text(f"#!/bin/sh\n{body}\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    return tool


def recorded_h100() -> tuple[str, int]:
    """The name (``nvidia-smi -L``) and memory (``nvidia-smi -q``, MiB) of a real H100, recorded."""
    listed = (GPU_OUTPUTS / "nvidia-smi_L_h100x8.txt").read_text().splitlines()[0]
    name = listed.split(": ", 1)[1].split(" (UUID")[0]
    query = (GPU_OUTPUTS / "nvidia-smi_q_h100x8_driver535.183.01.txt").read_text()
    total = query.split("FB Memory Usage", 1)[1].split("Total", 1)[1].split(":", 1)[1].split("MiB")[0]
    return name, int(total)


def test_the_memory_of_this_nodes_gpu_comes_from_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name, mib = recorded_h100()
    assert (name, mib) == ("NVIDIA H100 80GB HBM3", 81559)
    # what --query-gpu=name,memory.total --format=csv,noheader,nounits prints, one line per GPU
    write_tool(tmp_path / "bin", "nvidia-smi", "\n".join([f"echo '{name}, {mib}'"] * 8))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    found = memory_of_this_node()
    assert found is not None and found[0] == name and found[1] == pytest.approx(79.65, abs=0.01)
    assert gpu_memory_gib(name) == 80.0


def launch(action: str, model: str, env: dict[str, str], *overrides: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return subprocess.run(
        [sys.executable, "-m", "test_case.training.launch", action, model, *overrides],
        cwd=REPO_ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_launch_check_refuses_a_model_that_does_not_fit_before_anything_starts(
    mds_root: Path, demo_assets: tuple[Path, Path], tmp_path: Path
) -> None:
    data = {"DATA_ROOT": str(mds_root), "TOKENIZER": str(demo_assets[1]), "SAVE_ROOT": str(tmp_path)}
    seq = "variables.max_seq_len=128"  # the demo's shards hold 128-token samples
    out = launch("check", "mpt-70b", {**data, "GPU_TYPE": "a100-40gb", "NODES": "2"}, seq)
    assert out.returncode == 2, out.stdout + out.stderr
    (line,) = out.stderr.splitlines()
    assert line.startswith("launch: error: mpt-70b does not fit in GPU memory on 2 node(s) x 8 a100-40gb (40 GiB)")
    assert "run it on 4 node(s) or more (--nodes=4)" in line
    ok = launch("check", "mpt-70b", {**data, "GPU_TYPE": "a100-40gb", "NODES": "4"}, seq)
    assert ok.returncode == 0, ok.stderr
    assert "launch: memory: mpt-70b on 4 node(s) x 8 a100-40gb (40 GiB) needs about" in ok.stdout
    unknown = launch("check", "mpt-7b", {**data, "GPU_TYPE": "v100"}, seq)
    assert unknown.returncode == 2 and "GPU_TYPE=v100: no memory known for it (known: gb200, b200" in unknown.stderr
    cpu = launch("check", "mpt-tiny-cpu", data)
    assert cpu.returncode == 0 and "memory fit not checked: no GPU here (set GPU_TYPE" in cpu.stdout


def test_published_config_runs_the_published_microbatch_and_checkpointing(
    mds_root: Path, demo_assets: tuple[Path, Path], tmp_path: Path
) -> None:
    row = published_row("mpt-7b", "NVIDIA H100 80GB HBM3", 8, 2048)
    assert row is not None and (row.microbatch, row.activation_checkpointing, row.mp_mode) == (6, False, "DEFAULT")
    assert published_row("mpt-7b", "h100-sxm", 24, 2048) is None  # no published run on 24 GPUs
    assert published_row("mpt-7b", "h200", 8, 2048) is None  # none on H200
    plan = NodePlan("1", "r", 0, 1, 1, 0, "127.0.0.1", 29500, 1)
    yaml = REPO_ROOT / "yamls" / "mpt-7b.yaml"
    env = {"PUBLISHED_CONFIG": "1", "GPU_TYPE": "h100-sxm", "NODES": "1"}
    cfg = training_config(yaml, plan, env)
    assert cfg.device_train_microbatch_size == 6 and cfg.fsdp_config.activation_checkpointing is False
    assert (cfg.fsdp_config.mixed_precision, cfg.precision) == ("DEFAULT", "amp_bf16")
    # the user's own override still wins; without the option the yaml's setup runs
    assert training_config(yaml, plan, env, ["device_train_microbatch_size=4"]).device_train_microbatch_size == 4
    assert training_config(yaml, plan, {"GPU_TYPE": "h100-sxm"}).device_train_microbatch_size == 8
    out = launch("plan", "mpt-7b", env)  # the Composer command, with the published settings
    assert out.returncode == 0, out.stderr
    assert "device_train_microbatch_size=6 fsdp_config.activation_checkpointing=false" in out.stdout
    data = {"DATA_ROOT": str(mds_root), "TOKENIZER": str(demo_assets[1]), "SAVE_ROOT": str(tmp_path)}
    chosen = (
        "launch: mpt-7b on 8 h100-80gb runs llm-foundry's published configuration: precision amp_bf16, microbatch 6, "
        "activation checkpointing off, FSDP sharding FULL_SHARD, FSDP mixed precision DEFAULT (published 10,643 "
        "tokens/s/GPU, MFU 46.44 %)\n"
    )
    # the run's own sequence length picks the row: the demo data's 128 tokens have none (before: the
    # yaml's 2048 row was announced for a run at 128); at 2048 (no data of that length here) it is found
    checked = launch("check", "mpt-7b", {**env, **data}, "variables.max_seq_len=128")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(
        "launch: no published mpt-7b run on 8 h100-sxm at seq_len 128 with a precision this Composer runs: the "
        "yaml's configuration runs (its throughput is not compared)\n"
    ), checked.stdout
    at_128 = training_config(yaml, plan, env, ["variables.max_seq_len=128"])
    assert at_128.device_train_microbatch_size == 8  # the yaml's, not the 2048 row's 6
    assert f"launch: {published_config(plan, env, yaml, ['variables.max_seq_len=2048'])[1]}\n" == chosen
    # a published run needs about 68 of 78 GiB per GPU: it fits
    assert "needs about" in fit_line(shape_of(cfg), "mpt-7b", 1, 8, "h100-sxm", 80.0)[1]  # type: ignore[arg-type]
    assert estimate(shape_of(cfg), 8, 8, 80.0).total / GIB == pytest.approx(67.6, abs=0.1)  # type: ignore[arg-type]


def test_the_sweep_is_refused_at_plan_time_when_a_model_does_not_fit(capsys: pytest.CaptureFixture[str]) -> None:
    submitted: list[list[str]] = []

    def submit(argv: list[str]) -> str:
        submitted.append(argv)
        return str(len(submitted))

    args = ["submit", "--models", "mpt-7b,mpt-70b", "--nodes", "1,2", "--gpu-type", "h100-sxm"]
    assert acceptance_main([*args, "--", "--gpus-per-node=8"], submit=submit) == 2
    err = capsys.readouterr().err.splitlines()
    assert [e.split(" (80 GiB)")[0] for e in err] == [
        "3.acceptance: error: mpt-70b does not fit in GPU memory on 1 node(s) x 8 h100-sxm",
        "3.acceptance: error: mpt-70b does not fit in GPU memory on 2 node(s) x 8 h100-sxm",
    ]
    assert submitted == []
    # 4 GPUs a node: the 7B needs more nodes too
    assert (
        acceptance_main(
            [
                "submit",
                "--models",
                "mpt-13b",
                "--nodes",
                "1",
                "--gpu-type",
                "a100-40gb",
                "--dry-run",
                "--",
                "--gres=gpu:a100:4",
            ]
        )
        == 2
    )
    assert "mpt-13b does not fit in GPU memory on 1 node(s) x 4 a100-40gb (40 GiB)" in capsys.readouterr().err
    published = ["submit", "--models", "mpt-7b", "--nodes", "1", "--gpu-type", "h100-sxm", "--published-config"]
    assert acceptance_main([*published, "--dry-run", "--no-preflight"]) == 0
    out = capsys.readouterr().out
    assert "acceptance: mpt-7b on 8 h100-80gb runs llm-foundry's published configuration" in out
    assert "acceptance: memory: mpt-7b on 1 node(s) x 8 h100-sxm (80 GiB) needs about 67.6 GiB per GPU" in out
    assert out.splitlines()[-1].endswith(
        "mpt-7b global_train_batch_size=1024 precision=amp_bf16 device_train_microbatch_size=6 "
        "fsdp_config.activation_checkpointing=false fsdp_config.sharding_strategy=FULL_SHARD "
        "fsdp_config.mixed_precision=DEFAULT"
    )
    assert acceptance_main(["submit", "--models", "mpt-7b", "--nodes", "1", "--published-config", "--dry-run"]) == 2
    assert "--published-config needs --gpu-type" in capsys.readouterr().err
    assert acceptance_main(["submit", "--models", "mpt-7b", "--nodes", "1", "--dry-run"]) == 0
    assert "memory fit not checked before submitting (give --gpu-type" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("options", "gpus"),
    [
        (["--gpus-per-node=8"], 8),
        (["--gpus-per-node", "4"], 4),
        (["--gpus-per-node=h100:8"], 8),
        (["--gres=gpu:8"], 8),
        (["--gres=gpu:h100:4", "--partition=p5"], 4),
        (["--partition=p5"], None),
    ],
)
def test_gpus_per_node_from_the_sbatch_options(options: list[str], gpus: int | None) -> None:
    assert gpus_per_node_of(options) == gpus


def test_the_sweep_picks_the_published_row_of_the_sequence_length_it_runs() -> None:
    target = gpu_target("h100-sxm", ["--gpus-per-node=8"])
    chosen, (line,) = published_configs(["mpt-7b"], [1], target)
    assert "device_train_microbatch_size=6" in chosen[("mpt-7b", 1)] and "published 10,643" in line
    chosen, (line,) = published_configs(["mpt-7b"], [1], target, ["variables.max_seq_len=128"])
    assert chosen[("mpt-7b", 1)] == [] and line.startswith("no published mpt-7b run on 8 h100-sxm at seq_len 128")
