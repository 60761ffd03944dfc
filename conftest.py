"""Each notebook's runtime under nbval, printed at the end of a `pytest notebooks --nbval-lax` run
(stage 1 of `make test`; the Makefile runs the two stages explicitly, in order)."""

import os


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Each notebook's runtime under nbval (the sum of its cells), printed at the end."""
    seconds: dict[str, float] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            location = getattr(report, "nodeid", "")
            path = location.split("::")[0]
            if getattr(report, "when", None) != "call" or not path.endswith(".ipynb"):
                continue
            notebook = path.rsplit("/", 1)[-1]
            seconds[notebook] = seconds.get(notebook, 0.0) + report.duration
    if seconds:
        profile = os.environ.get("COURSE_PROFILE", "auto")
        terminalreporter.write_sep("=", f"notebook runtimes (nbval, {profile} profile)")
        for notebook, total in sorted(seconds.items()):
            terminalreporter.write_line(f"{notebook:<32} {total:7.1f} s")
