"""Entry point of `python -m preprocessing` (see `preprocessing.cli`)."""

import os

# numpy's OpenBLAS starts a thread per core at import; the converter makes no BLAS call, and those
# threads took about 1 % of the CPU the tokenizer needs (perf, 2 cores). Set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from preprocessing.cli import main

raise SystemExit(main())
