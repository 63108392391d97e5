"""Every yaml passes llm-foundry's own config validation; the ladder has the published shapes and sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from test_case.training.node_plan import plan_node
from test_case.training.run_config import training_config
from tests.conftest import REPO_ROOT

YAMLS = sorted((REPO_ROOT / "yamls").glob("*.yaml"))
# llm-foundry's pretrain yamls: d_model, n_heads, n_layers, lr, global batch, microbatch, activation ckpt
LADDER = {
    "mpt-125m": (768, 12, 12, 6.0e-4, 256, 16, False, 125e6),
    "mpt-350m": (1024, 16, 24, 3.0e-4, 256, 8, False, 350e6),
    "mpt-760m": (1536, 12, 24, 2.5e-4, 256, 4, False, 760e6),
    "mpt-1b": (2048, 16, 24, 2.0e-4, 512, 4, False, 1.3e9),
    "mpt-3b": (2560, 20, 32, 1.6e-4, 512, 8, True, 2.7e9),
    "mpt-7b": (4096, 32, 32, 1.2e-4, 1024, 8, True, 6.7e9),
    "mpt-13b": (5120, 40, 40, 1.0e-4, 1024, 8, True, 13e9),
    "mpt-30b": (7168, 56, 48, 1.0e-4, 2048, 8, True, 30e9),
    "mpt-70b": (8192, 64, 80, 8.0e-5, 2048, 4, True, 65e9),
}


def load_as_launched(path: Path) -> DictConfig:
    """The yaml with the overrides the sbatch script's launcher adds, as llm-foundry receives it."""
    plan = plan_node({"SLURM_JOB_ID": "99", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_JOB_NAME": "mpt-train"}, gpus=8)
    return training_config(path, plan, {"DATA_ROOT": "/fsx/c4", "SAVE_ROOT": "/fsx/ckpt"})


def test_ladder_is_complete() -> None:
    assert {p.stem for p in YAMLS} == {*LADDER, "mpt-tiny-cpu"}


@pytest.mark.parametrize("path", YAMLS, ids=[p.stem for p in YAMLS])
def test_yaml_passes_llmfoundry_validation(path: Path) -> None:
    from llmfoundry.command_utils.train import validate_config
    from llmfoundry.utils.config_utils import TRAIN_CONFIG_KEYS, TrainConfig, make_dataclass_and_log_config

    _, cfg = make_dataclass_and_log_config(load_as_launched(path), TrainConfig, TRAIN_CONFIG_KEYS, transforms="all")
    validate_config(cfg)
    assert cfg.autoresume is True  # llm-foundry 0.22 leaves it False otherwise
    assert cfg.run_name == "mpt-train-99"
    assert cfg.save_folder == "/fsx/ckpt/mpt-train-99/checkpoints"
    assert cfg.train_loader["dataset"]["local"] == "/fsx/c4"
    assert cfg.model["attn_config"]["alibi"] is True
    assert cfg.console_log_interval == "1ba" and cfg.python_log_level == "info"
    assert {"speed_monitor", "memory_monitor"} <= set(cfg.callbacks or {})
    window = cfg.callbacks["speed_monitor"]["window_size"]
    assert int(str(cfg.max_duration).removesuffix("ba")) >= 3 * window  # room for a steady-state window


@pytest.mark.parametrize("name", list(LADDER))
def test_ladder_shapes_and_parameter_counts(name: str) -> None:
    import torch
    from llmfoundry.models.mpt import MPTConfig, MPTForCausalLM

    d_model, heads, layers, lr, batch, micro, act_ckpt, size = LADDER[name]
    cfg = load_as_launched(REPO_ROOT / "yamls" / f"{name}.yaml")
    model = cfg.model
    assert (model.d_model, model.n_heads, model.n_layers, model.expansion_ratio) == (d_model, heads, layers, 4)
    assert (model.vocab_size, cfg.max_seq_len, model.attn_config.attn_impl) == (50368, 2048, "flash")
    assert cfg.optimizer.lr == pytest.approx(lr) and list(cfg.optimizer.betas) == [0.9, 0.95]
    assert (cfg.global_train_batch_size, cfg.device_train_microbatch_size) == (batch, micro)
    assert cfg.fsdp_config.activation_checkpointing is act_ckpt and cfg.precision == "amp_bf16"
    assert cfg.scheduler.t_warmup == "100ba" and cfg.tokenizer.name == "EleutherAI/gpt-neox-20b"
    # Build the model on the meta device (no memory) with torch attention: flash-attn is GPU-only.
    kwargs = {k: v for k, v in OmegaConf.to_container(model, resolve=True).items() if k != "name"}  # type: ignore[union-attr]
    kwargs["attn_config"] = dict(kwargs["attn_config"], attn_impl="torch")
    with torch.device("meta"):
        built = MPTForCausalLM(MPTConfig(**kwargs))
    n_params = sum(p.numel() for p in built.parameters())
    expected = 50368 * d_model + layers * (12 * d_model**2 + 2 * d_model) + d_model  # tied embedding, no biases
    assert n_params == expected
    assert 0.8 * size < n_params < 1.2 * size


def test_tiny_yaml_builds_and_runs_a_forward_pass(demo_assets: tuple[Path, Path]) -> None:
    import torch
    from llmfoundry.utils.builders import build_composer_model, build_tokenizer

    cfg = load_as_launched(REPO_ROOT / "yamls" / "mpt-tiny-cpu.yaml")
    tokenizer = build_tokenizer(str(demo_assets[1]), {"model_max_length": 128})
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    assert isinstance(model_cfg, dict)
    name = model_cfg.pop("name")
    model = build_composer_model(name=name, cfg=model_cfg, tokenizer=tokenizer)
    ids = torch.randint(0, 4096, (2, 128))
    out = model({"input_ids": ids, "labels": ids})
    assert out.logits.shape == (2, 128, 4096) and torch.isfinite(out.logits).all()


def test_config_check_knows_the_keys_of_the_pinned_llmfoundry() -> None:
    from llmfoundry.utils.config_utils import TRAIN_CONFIG_KEYS

    from test_case.training.config_check import TRAIN_KEYS

    assert set(TRAIN_KEYS) == set(TRAIN_CONFIG_KEYS)


@pytest.mark.parametrize("name", ["mpt-7b", "mpt-13b", "mpt-30b", "mpt-70b"])
def test_large_models_save_sharded_checkpoints(name: str) -> None:
    """7B and up: each rank writes its shard. Composer's default (``full``) gathers the whole state dict on
    rank 0 (hundreds of GB for 30B/70B) before a barrier of ``dist_timeout``, which a slow write outlasts."""
    cfg = load_as_launched(REPO_ROOT / "yamls" / f"{name}.yaml")
    assert OmegaConf.select(cfg, "fsdp_config.state_dict_type") == "sharded"
