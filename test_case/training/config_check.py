"""Configuration mistakes found in a second, before a job's nodes start Composer.

llm-foundry rejects a top-level key it does not know (``max_durtion=60ba``), but only after
Composer has started on every node (about 26 s on the tiny model), as one traceback per rank. The
same check is made here on the merged yaml and overrides, with the nearest valid key, without
importing llm-foundry: `TRAIN_KEYS` is the key set of llm-foundry 0.22's ``TrainConfig``
(``TRAIN_CONFIG_KEYS``; ``tests/test_launch.py`` checks the two are equal under the pinned
version). An override of a nested key the yaml does not have, when the yaml has a key of nearly
that name beside it (``train_loader.dataset.max_seq_lem``), is a mistake too.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

TRAIN_KEYS = frozenset(
    {
        "accumulate_train_batch_on_tokens", "algorithms", "autoresume", "callbacks", "code_paths", "compile_config",
        "console_log_interval", "cuda_load_lazy", "device_eval_batch_size", "device_train_batch_size",
        "device_train_grad_accum", "device_train_microbatch_size", "dist_timeout", "eval_first", "eval_gauntlet",
        "eval_gauntlet_str", "eval_interval", "eval_loader", "eval_loaders", "eval_subset_num_batches",
        "expandable_segments", "flatten_metadata", "fsdp_config", "global_train_batch_size", "icl_seq_len",
        "icl_subset_num_batches", "icl_tasks", "icl_tasks_str", "load_ignore_keys", "load_path",
        "load_strict_model_weights", "load_weights_only", "log_config", "log_to_console", "loggers", "max_duration",
        "max_seq_len", "max_split_size_mb", "metadata", "model", "n_gpus", "only_composer_checkpoint",
        "only_hf_checkpoint", "optimizer", "precision", "profiler", "progress_bar", "python_log_level", "run_name",
        "save_filename", "save_folder", "save_ignore_keys", "save_interval", "save_latest_filename",
        "save_num_checkpoints_to_keep", "save_overwrite", "save_weights_only", "scheduler", "seed",
        "spin_dataloaders", "tokenizer", "tp_config", "train_loader", "train_subset_num_batches", "variables",
    }
)  # fmt: skip


def _nearest(key: str, choices: Sequence[str] | frozenset[str]) -> str | None:
    found = difflib.get_close_matches(key, sorted(choices), n=1, cutoff=0.75)
    return found[0] if found else None


def override_problems(yaml_cfg: Mapping[str, Any], overrides: Sequence[str]) -> list[str]:
    """Overrides that are not ``key=value``, or that set a nested key the yaml lacks when it has a
    key of nearly that name beside it (``yaml_cfg``: the yaml as a plain dict, before overrides)."""
    problems = []
    for item in overrides:
        path, sep, _ = item.partition("=")
        if not sep or not path:
            problems.append(f"override {item!r} is not key=value (e.g. max_duration=200ba)")
            continue
        *parents, leaf = path.split(".")
        node: Any = yaml_cfg
        for part in parents:
            node = node.get(part) if isinstance(node, Mapping) else None
        if parents and isinstance(node, Mapping) and leaf not in node:
            siblings = [str(k) for k in node]
            if (near := _nearest(leaf, siblings)) is not None:
                parent = ".".join(parents)
                problems.append(
                    f"override {item!r}: {parent} has no key {leaf!r}; did you mean {parent}.{near}? "
                    "(fix the override; a new key there would reach llm-foundry as an unknown argument)"
                )
    return problems


def unknown_key_problems(merged_cfg: Mapping[str, Any], yaml_name: str) -> list[str]:
    """Top-level keys of the config llm-foundry would receive that it does not know."""
    problems = []
    for key in sorted(str(k) for k in merged_cfg):
        if key not in TRAIN_KEYS:
            near = _nearest(key, TRAIN_KEYS)
            hint = f"did you mean {near!r}?" if near else "put values of your own under 'variables'"
            problems.append(f"{yaml_name}: llm-foundry has no config key {key!r}: {hint}")
    return problems


def batch_problem(global_batch: object, ranks: int, ranks_per_node: int) -> str | None:
    """llm-foundry splits ``global_train_batch_size`` evenly over the ranks and raises a ``ValueError``
    on every rank when it cannot (``calculate_batch_size_info``), after Composer has started: the same
    rule here, one line naming both numbers, the nearest batch sizes that work and the node counts
    that divide this one; None when it divides (or is not a number: llm-foundry will say)."""
    if not isinstance(global_batch, int) or isinstance(global_batch, bool) or ranks < 1 or global_batch % ranks == 0:
        return None
    below, above = global_batch // ranks * ranks, (global_batch // ranks + 1) * ranks
    nearest = " or ".join(str(b) for b in (below, above) if b > 0)
    nodes = [n for n in range(1, 65) if global_batch % (n * ranks_per_node) == 0]
    hint = f", or run on {', '.join(map(str, nodes[:6]))} node(s)" if nodes else ""
    return (
        f"global_train_batch_size={global_batch} is not divisible by the job's {ranks} ranks "
        f"({ranks // max(1, ranks_per_node)} node(s) x {ranks_per_node}): llm-foundry would stop every rank; "
        f"use global_train_batch_size={nearest}{hint}"
    )
