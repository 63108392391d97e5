"""The report: Composer logs parsed (`log_parser`), figures computed (`metrics`, `compare`), rendered
(`render`, `plots`); `cli` is the command behind ``python report.py``."""
