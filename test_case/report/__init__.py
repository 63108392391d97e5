"""The report: Composer logs parsed (`log_lines`, a large file read fast by `log_reading`), figures
computed (`metrics`, `compare`), rendered (`render`, `plots`); `cli` is the command behind
``python report.py``."""
