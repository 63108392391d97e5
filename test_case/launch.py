"""Old name of `test_case.training.launch`, kept for batch scripts Slurm stored before the move.

Slurm runs the copy of a batch script taken at submission, also when it requeues the job, so a job
submitted with an older checkout still calls ``python -m test_case.launch``. New scripts call
``python -m test_case.training.launch``.
"""

from test_case.training.launch import main

if __name__ == "__main__":
    raise SystemExit(main())
