"""The report: Composer logs parsed (`log_parser`), figures computed (`metrics`, `compare`), rendered
(`sections`, `layout`, `cells`, `render`, `plots`) from one typed `records.Report`; `cli` is the
command behind ``python report.py``."""
