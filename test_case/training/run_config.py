"""The run's configuration: the yaml of a model with the suite's and the user's overrides, checked.

`training_config` is the config exactly as llm-foundry will read it (the yaml, then the overrides the
suite always passes: run name, DATA_ROOT, TOKENIZER, SAVE_ROOT, PUBLISHED_CONFIG's published row,
MIXTURE's streams; then the user's, which win). `checked_config` adds the mistakes llm-foundry would
find only once every rank has started (`test_case.training.config_check`). `loader_datasets` lists
every dataset the run reads, for the checks before a start (`test_case.training.start_checks`) and the
run header. Above `node_plan`; below `launch`, `restarts` and the acceptance plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from test_case import REPO_ROOT
from test_case.training.config_check import override_problems, unknown_key_problems
from test_case.training.dataset_fit import DatasetFacts, dataset_facts
from test_case.training.memory_fit import planned_gpus
from test_case.training.mixture import load_mixture, mixture_overrides
from test_case.training.node_plan import LaunchError, NodePlan, first_gpu_name

if TYPE_CHECKING:  # omegaconf is imported where it is used: `launch header` and `plan` stay light
    from omegaconf import DictConfig


def resolve_yaml(model: str) -> Path:
    """``mpt-7b`` -> ``yamls/mpt-7b.yaml``; a path to a yaml is taken as it is."""
    path = Path(model).resolve() if model.endswith((".yaml", ".yml")) else REPO_ROOT / "yamls" / f"{model}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in (REPO_ROOT / "yamls").glob("*.yaml")))
        raise LaunchError(f"no yaml for model {model!r} at {path} (known: {known})")
    return path


def config_overrides(
    plan: NodePlan, env: Mapping[str, str], yaml: Path | None = None, user: Sequence[str] = ()
) -> list[str]:
    """OmegaConf dotlist the suite always passes; the user's own overrides come after and win.

    With ``MIXTURE`` set (and the ``yaml``, whose ``eval_loader`` the per-stream eval loaders copy),
    the mixture's streams (`test_case.training.mixture`); a mistake in it raises `MixtureError`."""
    out = [f"variables.run_name={plan.run_name}"]
    for var, key in (("DATA_ROOT", "data_local"), ("TOKENIZER", "tokenizer_name"), ("SAVE_ROOT", "save_root")):
        if env.get(var):
            out.append(f"variables.{key}={env[var]}")
    if yaml is not None:
        out += published_config(plan, env, yaml, user)[0]
    if env.get("MIXTURE") and yaml is not None:
        from omegaconf import OmegaConf

        template = OmegaConf.to_container(OmegaConf.load(yaml), resolve=False).get("eval_loader")  # type: ignore[union-attr]
        out += mixture_overrides(load_mixture(Path(env["MIXTURE"])), template if isinstance(template, dict) else None)
    return out


def published_config(
    plan: NodePlan, env: Mapping[str, str], yaml: Path, user: Sequence[str] = ()
) -> tuple[list[str], str | None]:
    """With ``PUBLISHED_CONFIG=1``: the overrides of llm-foundry's published run of this model, GPU
    (this node's, or ``GPU_TYPE``), world size and sequence length (the run's: the yaml's after the
    ``user`` overrides), and the line that says what was chosen
    (`test_case.published_runs.published_row`); nothing without it."""
    if env.get("PUBLISHED_CONFIG", "0") in ("", "0"):
        return [], None
    from omegaconf import OmegaConf

    from test_case.published_runs import published_line, published_overrides, published_row

    gpu = env.get("GPU_TYPE") or (first_gpu_name() if plan.gpus_per_node else None)
    if gpu is None:
        return [], "PUBLISHED_CONFIG=1: no GPU on this node and no GPU_TYPE: the yaml's configuration runs"
    seq_len = OmegaConf.select(OmegaConf.merge(OmegaConf.load(yaml), OmegaConf.from_dotlist(list(user))), "max_seq_len")
    seq = seq_len if isinstance(seq_len, int) else 0
    per_node, nodes = planned_gpus(env, plan.gpus_per_node, plan.num_nodes)
    row = published_row(yaml.stem, gpu, per_node * nodes, seq)
    return (published_overrides(row) if row else []), published_line(yaml.stem, gpu, per_node * nodes, seq, row)


def _path_like(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~"))


def training_config(yaml: Path, plan: NodePlan, env: Mapping[str, str], overrides: Sequence[str] = ()) -> DictConfig:
    """The yaml with the launcher's and the user's overrides applied, as llm-foundry will see it."""
    from omegaconf import DictConfig, OmegaConf

    merged = OmegaConf.merge(
        OmegaConf.load(yaml), OmegaConf.from_dotlist([*config_overrides(plan, env, yaml, overrides), *overrides])
    )
    assert isinstance(merged, DictConfig)
    return merged


def local_save_folder(cfg: DictConfig, cwd: Path) -> Path | None:
    """The run's checkpoint folder when it is on a filesystem here (None: unset, or object storage)."""
    from omegaconf import OmegaConf

    save_folder = OmegaConf.select(cfg, "save_folder")
    if not save_folder or "://" in str(save_folder):
        return None
    return cwd / str(save_folder)


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) else None


def loader_datasets(cfg: DictConfig) -> list[tuple[str, Any]]:
    """(name for messages, dataset config) of every dataset the run reads: the training set, or
    each of its streams, and the eval set or each labelled eval loader."""
    from omegaconf import ListConfig, OmegaConf

    found: list[tuple[str, Any]] = []
    train = OmegaConf.select(cfg, "train_loader.dataset")
    if train is not None and train.get("streams"):
        for name, stream in train.streams.items():
            merged = OmegaConf.merge({"max_seq_len": train.get("max_seq_len")}, stream)
            found.append((f"train_loader stream {name}", merged))
    elif train is not None:
        found.append(("train_loader", train))
    evals = OmegaConf.select(cfg, "eval_loader") or OmegaConf.select(cfg, "eval_loaders")
    for i, loader in enumerate(evals if isinstance(evals, ListConfig) else [evals] if evals else []):
        if loader.get("dataset") is not None:
            label = loader.get("label")
            found.append(
                (f"eval_loader {label}" if label else "eval_loader" if i == 0 else f"eval_loader {i}", loader.dataset)
            )
    return found


def train_dataset_facts(cfg: DictConfig, cwd: Path) -> DatasetFacts | None:
    """What the preprocessing recorded about the training split, or its first stream (for the run header)."""
    datasets = [d for name, d in loader_datasets(cfg) if name.startswith("train_loader")]
    if not datasets or datasets[0].get("remote"):
        return None
    return dataset_facts(cwd / str(datasets[0].local) / str(datasets[0].split))


def checked_config(
    yaml: Path, plan: NodePlan, env: Mapping[str, str], overrides: Sequence[str]
) -> tuple[DictConfig | None, list[str]]:
    """The config llm-foundry will read (`training_config`), or None and the mistakes in the yaml
    and the overrides that llm-foundry would find only once every rank has started
    (`test_case.training.config_check`)."""
    from omegaconf import OmegaConf

    problems = override_problems(OmegaConf.to_container(OmegaConf.load(yaml)), overrides)  # type: ignore[arg-type]
    if problems:
        return None, problems
    merged = training_config(yaml, plan, env, overrides)
    problems = unknown_key_problems(OmegaConf.to_container(merged), yaml.name)  # type: ignore[arg-type]
    return (None if problems else merged), problems
