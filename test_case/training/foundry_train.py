"""`python -m test_case.training.foundry_train YAML [overrides]`: ``llmfoundry train`` that survives shared filesystems.

Composer's launcher starts this module on every rank instead of the ``llmfoundry train`` command.
It is that command (``llmfoundry.command_utils.train_from_yaml``) with one fix applied first:

Composer's ``dist.get_node_signal_file_name()`` draws a random name on rank 0 and broadcasts it,
so every node gets ``._signal_file_node0_XXXXXX``. llm-foundry's ``build_tokenizer`` (in the working
directory) and Composer's autoresume (in ``save_folder``) then make local rank 0 of *every* node
create and delete that one file. On the shared filesystem of a Slurm cluster the second delete
fails with ``FileNotFoundError`` (llm-foundry issues 1736 and 1848; seen here with 2 nodes). The
file is meant to be per node, so we append this node's rank to the broadcast name.

When the launcher sets ``SUITE_HEARTBEAT_DIR``, each rank also starts its heartbeat thread
(`test_case.training.heartbeat`), which names a rank that stops in a hung run.

Every run also gets the ``rank_timing`` callback (`test_case.training.rank_timing`) unless its yaml
or an override switches it off (``callbacks.rank_timing.enabled=false``): `with_rank_timing`; every
run whose train dataset has ``streams`` (a mixture) also gets ``stream_draws``
(`test_case.training.stream_draws`), which counts the samples drawn from each stream.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

from composer.utils import dist
from omegaconf import DictConfig
from omegaconf import OmegaConf as om

from test_case.training import rank_timing, stream_draws
from test_case.training.heartbeat import DIR_ENV, start_heartbeat

_broadcast_signal_file_name = dist.get_node_signal_file_name


def per_node_signal_file_name(rng: random.Random | None = None) -> str:
    """Rank 0's broadcast name, made unique per node."""
    return f"{_broadcast_signal_file_name(rng)}_n{dist.get_node_rank()}"


def with_rank_timing(cfg: DictConfig) -> DictConfig:
    """``cfg`` with ``callbacks.rank_timing`` added (default arguments) where it is not set."""
    callbacks = cfg.get("callbacks") or {}
    if rank_timing.NAME in callbacks:
        return cfg
    merged = om.merge(cfg, {"callbacks": {rank_timing.NAME: {}}})
    assert isinstance(merged, DictConfig)
    return merged


def with_stream_draws(cfg: DictConfig) -> DictConfig:
    """``cfg`` with ``callbacks.stream_draws`` added where its train dataset has streams and it is not set."""
    callbacks = cfg.get("callbacks") or {}
    streams = om.select(cfg, "train_loader.dataset.streams", default=None)
    if not streams or stream_draws.NAME in callbacks:
        return cfg
    merged = om.merge(cfg, {"callbacks": {stream_draws.NAME: {"names": [str(name) for name in streams]}}})
    assert isinstance(merged, DictConfig)
    return merged


def load_config(yaml_path: str, overrides: list[str]) -> DictConfig:
    """The yaml merged with the ``key=value`` overrides, as ``llmfoundry train`` merges them."""
    om.clear_resolver("oc.env")  # as llm-foundry's train_from_yaml: no environment lookups in a yaml
    cfg = om.load(yaml_path)
    if overrides:
        cfg = om.merge(cfg, om.from_cli(overrides))
    assert isinstance(cfg, DictConfig)
    return cfg


def main(argv: list[str] | None = None) -> int:
    """Apply the fix, then run llm-foundry's training as ``llmfoundry train`` does, with rank timing."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m test_case.training.foundry_train YAML [key=value ...]", file=sys.stderr)
        return 2
    dist.get_node_signal_file_name = per_node_signal_file_name
    if os.environ.get(DIR_ENV):
        start_heartbeat(Path(os.environ[DIR_ENV]), int(os.environ.get("RANK", "0")))
    from llmfoundry.command_utils import train

    rank_timing.register()
    stream_draws.register()
    train(with_stream_draws(with_rank_timing(load_config(args[0], args[1:]))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
