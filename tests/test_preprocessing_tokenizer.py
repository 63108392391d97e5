"""The converter's tokenizer (`preprocessing.tokenizer`): ``tokenizers`` alone where that gives
``AutoTokenizer``'s ids, ``AutoTokenizer`` where transformers would change the tokenizer on loading."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from preprocessing.tokenizer import (
    load_tokenizer,
    special_ids,
    token_ids,
    tokenized_ahead,
    untruncated,
    vocab_size,
    why_not_plain,
)

TEXTS = [
    "Hello world",
    "  leading spaces and\ttabs\nnew lines",
    "an <|endoftext|> inside a document",
    "unicode: naïve café, 日本語, emoji 🙂",
    "",
    "x" * 5000,
]


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_case.demo.bpe_tokenizer import gpt2_tokenizer_folder

    return gpt2_tokenizer_folder(tmp_path_factory.mktemp("gpt2") / "gpt2")


def auto_ids(folder: Path, texts: list[str]) -> list[list[int]]:
    from transformers import AutoTokenizer

    return list(AutoTokenizer.from_pretrained(str(folder))(texts, truncation=False, padding=False)["input_ids"])


def test_plain_tokenizers_load_without_transformers_and_give_its_ids(
    demo_assets: tuple[Path, Path], gpt2: Path
) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    for folder in (demo_assets[1], gpt2):
        assert why_not_plain(folder) is None
        ours = untruncated(load_tokenizer(str(folder)))
        assert isinstance(ours, Tokenizer)
        assert token_ids(ours, TEXTS) == auto_ids(folder, TEXTS)
        auto = AutoTokenizer.from_pretrained(str(folder))
        assert vocab_size(ours) == len(auto)
        assert special_ids(ours, "<|endoftext|>") == auto("<|endoftext|>", add_special_tokens=False)["input_ids"]
        assert special_ids(ours, "") == []


def edited(folder: Path, out: Path, **config: object) -> Path:
    shutil.copytree(folder, out)
    path = out / "tokenizer_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | config))
    return out


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"tokenizer_class": "GPTNeoXTokenizerFast", "add_bos_token": True, "bos_token": "<|endoftext|>"}, "add_bos"),
        ({"pad_token": "<pad>"}, "'<pad>' is not an added token"),
        ({"add_prefix_space": True}, "add_prefix_space"),
        ({"tokenizer_class": "LlamaTokenizerFast"}, "tokenizer_class LlamaTokenizerFast"),
    ],
)
def test_what_transformers_would_change_loads_with_transformers(
    demo_assets: tuple[Path, Path], tmp_path: Path, config: dict[str, object], reason: str
) -> None:
    folder = edited(demo_assets[1], tmp_path / "tok", **config)
    assert reason in (why_not_plain(folder) or "")
    if config.get("tokenizer_class") == "LlamaTokenizerFast":
        return  # the demo's byte-level BPE is no Llama tokenizer: only the decision is checked
    ours = untruncated(load_tokenizer(str(folder)))
    assert getattr(ours, "is_fast", False)  # transformers' tokenizer
    assert token_ids(ours, TEXTS) == auto_ids(folder, TEXTS)
    if "add_bos_token" in config:
        assert token_ids(ours, ["a"])[0][0] == ours.bos_token_id  # what the plain file would not add
    if "pad_token" in config:
        assert vocab_size(ours) == vocab_size(load_tokenizer(str(demo_assets[1]))) + 1


@pytest.mark.parametrize("in_flight", [1, 2, 3])
def test_batches_tokenized_ahead_come_back_in_order_and_read_no_further_than_in_flight(
    gpt2: Path, in_flight: int
) -> None:
    tokenizer = untruncated(load_tokenizer(str(gpt2)))
    # a long batch first and short ones after: finishing order differs from submission order
    batches = [[("long text " * 4000) + str(i)] * 8 if i % 3 == 0 else [f"short {i}"] for i in range(10)]
    read: list[int] = []

    def source() -> Iterator[tuple[int, list[str]]]:
        for i, batch in enumerate(batches):
            read.append(i)
            yield i, batch

    seen = []
    for key, texts, ids in tokenized_ahead(tokenizer, source(), in_flight=in_flight):
        assert len(read) <= key + in_flight + 1  # this batch and at most in_flight behind it
        assert texts is batches[key]
        assert ids == token_ids(tokenizer, texts)
        seen.append(key)
    assert seen == list(range(len(batches)))
