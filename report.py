"""`python report.py PATH [PATH ...]`: the report from Composer training logs (docs/report.md, "The report").

A thin entry point: the command lives in `test_case.report.cli`, the parsing, arithmetic and
rendering beside it in `test_case/report/`. Exit codes: 0 report written; 1 no run found;
2 bad arguments or unreadable input; 3 ``--baseline`` given and a run is below it by more than
``--tolerance``; 4 an acceptance sweep's verdict is FAIL.
"""

from test_case.report.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
