"""The report: Composer logs parsed (`log_lines`, a large file read fast by `log_reading`), figures
computed (`metrics`, `compare`), rendered (`sections`, `layout`, `cells`, `render`, `plots`) from one
typed `records.Report`; `cli` is the command behind ``python report.py``."""
