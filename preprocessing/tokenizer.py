"""The converter's tokenizer: the same token ids as ``AutoTokenizer``, without importing transformers where it can.

``transformers`` takes seconds to import (it pulls in torch). For a tokenizer saved with a
``tokenizer.json`` whose ``tokenizer_config.json`` changes nothing in it, ``AutoTokenizer`` ends up
running exactly that file through Hugging Face ``tokenizers``: `load_tokenizer` then loads it with
``tokenizers.Tokenizer.from_file`` (milliseconds). It falls back to ``AutoTokenizer`` whenever
``transformers`` would change the backend tokenizer on loading (`why_not_plain` names the reason):

* a tokenizer class other than the plain byte-level BPE ones (``PreTrainedTokenizer(Fast)``,
  ``GPT2Tokenizer(Fast)``, ``GPTNeoXTokenizer(Fast)``): Llama's and others rewrite the post-processor;
* ``add_bos_token`` / ``add_eos_token`` set (the GPT-NeoX class then adds them in its post-processor);
* ``add_prefix_space`` (default false) different from the pre-tokenizer's, or ``split_special_tokens``;
* an added or special token of the config that ``tokenizer.json`` does not hold with the same flags
  (transformers would add it).

A hub name is resolved to its cached files with ``huggingface_hub`` (offline when ``HF_HUB_OFFLINE``
is set); anything it cannot fetch falls back too. Tests check the ids against ``AutoTokenizer``'s.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from concurrent.futures import Future

K = TypeVar("K")

PLAIN_CLASSES = ("PreTrainedTokenizer", "GPT2Tokenizer", "GPTNeoXTokenizer")
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
TOKEN_FLAGS = ("content", "lstrip", "rstrip", "normalized", "single_word", "special")
FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _local_files(name_or_dir: str) -> Path | None:
    """The folder holding the tokenizer's files: the folder given, or the hub snapshot in the cache."""
    folder = Path(name_or_dir).expanduser()
    if folder.is_dir():
        return folder
    try:
        from huggingface_hub import hf_hub_download

        found = Path(hf_hub_download(name_or_dir, "tokenizer.json")).parent
        for name in FILES[1:]:
            with contextlib.suppress(Exception):  # an optional file: absent from the repository or the cache
                hf_hub_download(name_or_dir, name)
        return found
    except Exception:
        return None


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    raw = json.loads(path.read_text(encoding="utf-8"))
    return raw if isinstance(raw, dict) else {}


def _token(value: Any) -> dict[str, Any] | None:
    """A config's token (a string or an AddedToken dict) as a dict of its flags (content only for a string)."""
    if isinstance(value, str):
        return {"content": value}
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value
    return None


def why_not_plain(folder: Path, backend: Any = None) -> str | None:
    """Why ``AutoTokenizer`` would load something else than ``folder/tokenizer.json`` as it is; None if
    not. ``backend``: that file already loaded as a ``tokenizers.Tokenizer`` (else it is loaded here)."""
    if not (folder / "tokenizer.json").is_file():
        return "no tokenizer.json"
    config = _json(folder / "tokenizer_config.json")
    cls = str(config.get("tokenizer_class") or "")
    if cls.removesuffix("Fast") not in PLAIN_CLASSES:
        return f"tokenizer_class {cls or 'not set'}"
    for key in ("add_bos_token", "add_eos_token", "split_special_tokens"):
        if config.get(key):
            return f"{key} is set"
    if backend is None:
        from tokenizers import Tokenizer

        backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
    pre = json.loads(backend.pre_tokenizer.__getstate__()) if backend.pre_tokenizer is not None else None
    if (
        isinstance(pre, dict)
        and "add_prefix_space" in pre
        and pre["add_prefix_space"] != config.get("add_prefix_space", False)
    ):
        return "add_prefix_space differs from the pre-tokenizer's"
    held = {
        t.content: {
            "content": t.content,
            "lstrip": t.lstrip,
            "rstrip": t.rstrip,
            "normalized": t.normalized,
            "single_word": t.single_word,
            "special": t.special,
        }
        for t in backend.get_added_tokens_decoder().values()
    }
    wanted: list[Any] = list((config.get("added_tokens_decoder") or {}).values())
    specials = _json(folder / "special_tokens_map.json") | {k: v for k, v in config.items() if k in SPECIAL_KEYS}
    wanted += [specials.get(k) for k in SPECIAL_KEYS]
    wanted += list(specials.get("additional_special_tokens") or []) + list(
        config.get("additional_special_tokens") or []
    )
    for value in wanted:
        if value is None:
            continue
        token = _token(value)
        if token is None:
            return f"a special token it cannot read: {value!r}"
        have = held.get(token["content"])
        if have is None:
            return f"{token['content']!r} is not an added token of tokenizer.json"
        if any(k in token and token[k] != have.get(k) for k in TOKEN_FLAGS):
            return f"{token['content']!r} has other flags than in tokenizer.json"
    return None


def load_tokenizer(name_or_dir: str) -> Any:
    """A ``tokenizers.Tokenizer`` when that is what ``AutoTokenizer`` would run (module docstring),
    else the ``AutoTokenizer`` (a local folder, or a hub name when online or cached)."""
    folder = _local_files(name_or_dir)
    if folder is not None and (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        if why_not_plain(folder, backend) is None:
            return backend
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name_or_dir)


def _backend(tokenizer: Any) -> Any:
    """The Rust tokenizer of a fast transformers tokenizer, or the ``tokenizers.Tokenizer`` itself; else None."""
    if getattr(tokenizer, "is_fast", False):
        return tokenizer.backend_tokenizer
    return tokenizer if hasattr(tokenizer, "encode_batch") else None


def untruncated(tokenizer: Any) -> Any:
    """The tokenizer with truncation and padding off in its backend, as ``truncation=False,
    padding=False`` set them for each call."""
    if (backend := _backend(tokenizer)) is not None:
        backend.no_truncation()
        backend.no_padding()
    return tokenizer


def token_ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """``tokenizer(texts, truncation=False, padding=False)["input_ids"]``: read straight from the Rust
    backend where there is one (what that call runs). Call `untruncated` on the tokenizer first."""
    if (backend := _backend(tokenizer)) is not None:
        # encode_batch_fast: the same ids without the character offsets (about 30 % less work)
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return [encoding.ids for encoding in encode(texts, add_special_tokens=True)]
    return list(tokenizer(texts, truncation=False, padding=False)["input_ids"])


IN_FLIGHT = 2  # batches tokenizing at once (`tokenized_ahead`)


def tokenized_ahead(
    tokenizer: Any, batches: Iterable[tuple[K, list[str]]], in_flight: int = IN_FLIGHT
) -> Iterator[tuple[K, list[str], list[list[int]]]]:
    """``(key, texts, token_ids(texts))`` for each batch, in order, while the next ``in_flight``
    batches tokenize in threads as the caller handles this one and reads the one after (the Rust
    tokenizer releases the GIL). A batch must not be changed once yielded by ``batches``.

    Two in flight rather than one: the tokenizer's threads then always have a batch to work on,
    while one thread turns the last batch's encodings into Python lists (under the GIL) and while
    the slowest document of a batch keeps one of them busy; measured on 2 cores (docs/preprocessing.md,
    "Preprocessing"), the converter's wall time went from 94 % to 97 % of the ceiling's (medians of
    4 runs, side by side). A worker whose tokenizer runs on one thread (``--workers`` as many as
    the CPUs) thus tokenizes on two."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="tokenize") as pool:
        pending: deque[tuple[K, list[str], Future[list[list[int]]]]] = deque()
        for key, texts in batches:
            pending.append((key, texts, pool.submit(token_ids, tokenizer, texts)))
            while len(pending) > in_flight:
                yield _finished(pending.popleft())
        while pending:
            yield _finished(pending.popleft())


def _finished(job: tuple[K, list[str], Future[list[list[int]]]]) -> tuple[K, list[str], list[list[int]]]:
    """A batch of `tokenized_ahead` with its ids, once its thread has them."""
    return job[0], job[1], job[2].result()


def special_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a BOS/EOS text, without the tokenizer adding its own specials."""
    if not text:
        return []
    if (backend := _backend(tokenizer)) is not None:
        return list(backend.encode(text, add_special_tokens=False).ids)
    return list(tokenizer(text, truncation=False, padding=False, add_special_tokens=False)["input_ids"])


def vocab_size(tokenizer: Any) -> int:
    """Token ids the tokenizer can produce: ``len(tokenizer)`` (its added tokens included)."""
    if hasattr(tokenizer, "get_vocab_size"):
        return int(tokenizer.get_vocab_size(with_added_tokens=True))
    return len(tokenizer)
