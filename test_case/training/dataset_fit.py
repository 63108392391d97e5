"""Does the dataset fit the model? Checked on every node before any rank starts (`start_checks`).

The preprocessing (``python -m preprocessing``) records in each split's ``summary.json`` the sample
length it cut (``options.concat_tokens``), the largest token id it wrote and the tokenizer it used
(`preprocessing.merge.tokenizer_identity`). A dataset that does not fit trains without an error
and gives wrong numbers: shorter samples than ``max_seq_len`` are padded, so the run reports FLOPs
for tokens it never saw; ids at or above ``vocab_size`` index past the embedding (or Composer
resizes it); another tokenizer trains on ids that mean other words. Each mismatch is one line naming
both sides and the fix. A split without ``summary.json`` (made by another tool) is not judged.
An eval split made from the training split's input files is a warning (`eval_data_overlap`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from preprocessing.merge import tokenizer_identity
from preprocessing.splits import data_overlap

SUMMARY = "summary.json"


@dataclass(frozen=True)
class DatasetFacts:
    """What the preprocessing recorded about one split."""

    split_dir: Path
    sample_tokens: int  # tokens per sample (concat_tokens)
    max_token_id: int
    tokenizer: str  # as given to the preprocessing
    tokenizer_path: str | None  # absolute folder, or hub name (None in summaries of older versions)
    tokenizer_sha256: str | None  # of tokenizer.json, for a local folder

    def describe_tokenizer(self) -> str:
        """The tokenizer as the run header records it and the report shows it: a hub name, or a local
        folder's absolute path (as the preprocessing gave it, for a summary of an older version)."""
        return self.tokenizer_path or self.tokenizer


def dataset_facts(split_dir: Path) -> DatasetFacts | None:
    """The split's recorded facts; None when it has no readable ``summary.json`` of this suite."""
    try:
        summary: dict[str, Any] = json.loads((split_dir / SUMMARY).read_text())
        options = summary["options"]
        return DatasetFacts(
            split_dir=split_dir,
            sample_tokens=int(options["concat_tokens"]),
            max_token_id=int(summary["max_token_id"]),
            tokenizer=str(options["tokenizer"]),
            tokenizer_path=summary.get("tokenizer_path"),
            tokenizer_sha256=summary.get("tokenizer_sha256"),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def fit_problems(
    loader: str, facts: DatasetFacts, seq_len: int | None, vocab_size: int | None, tokenizer: str
) -> list[str]:
    """One line per way ``facts`` does not fit the model that ``loader`` feeds."""
    where = f"{loader}: dataset {facts.split_dir}"
    problems = []
    if seq_len is not None and facts.sample_tokens != seq_len:
        problems.append(
            f"{where} holds {facts.sample_tokens}-token samples but the model trains on max_seq_len={seq_len}: "
            f"preprocess with CONCAT_TOKENS={seq_len} (into another DATA_ROOT), or train with max_seq_len="
            f"{facts.sample_tokens}"
        )
    if vocab_size is not None and facts.max_token_id >= vocab_size:
        problems.append(
            f"{where} holds token ids up to {facts.max_token_id} but the model's vocab_size is {vocab_size}: "
            f"preprocess with the model's tokenizer, or set model.vocab_size above {facts.max_token_id}"
        )
    if facts.tokenizer_path is not None:
        ours = tokenizer_identity(tokenizer)
        if ours["tokenizer_sha256"] or facts.tokenizer_sha256:
            same = ours["tokenizer_sha256"] == facts.tokenizer_sha256
        else:
            same = ours["tokenizer_path"] == facts.tokenizer_path
        if not same:
            problems.append(
                f"{where} was tokenized with {facts.tokenizer_path} but training uses {ours['tokenizer_path']}: "
                "set TOKENIZER to the tokenizer the data was made with, or preprocess again with this one"
            )
    return problems


def eval_data_overlap(datasets: list[tuple[str, Any]], cwd: Path) -> list[str]:
    """Each eval loader whose data was preprocessed from input files the training data was made from
    too, with no holdout separating their documents (`preprocessing.splits.data_overlap`): its eval
    loss is measured on training documents. ``datasets``: the run's loaders
    (`test_case.training.run_config.loader_datasets`); judged from the splits' ``summary.json``."""
    summaries: list[tuple[str, dict[str, Any]]] = []
    for name, dataset in datasets:
        if dataset.get("remote"):
            continue
        try:
            summaries.append((name, json.loads((cwd / str(dataset.local) / str(dataset.split) / SUMMARY).read_text())))
        except (OSError, ValueError):
            continue
    trains = [(n, s) for n, s in summaries if n.startswith("train_loader")]
    lines = []
    for name, summary in summaries:
        if name.startswith("train_loader"):
            continue
        for train_name, train in trains:
            if shared := data_overlap(train, summary):
                lines.append(
                    f"{name} ({summary.get('split')}) was made from {shared} input file(s) that {train_name} "
                    f"({train.get('split')}) was made from too: its eval loss is measured on training documents "
                    "(preprocess the validation split with VAL_INPUT or HOLDOUT)"
                )
                break
    return lines
