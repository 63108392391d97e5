"""Offline inputs for the demo and the tests: a C4-format sample and a byte-level BPE tokenizer."""
