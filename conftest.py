"""Test order for `make test`: unit tests, then the notebooks under nbval, then the learning
checks (tests/test_learning_*.py), which read the results files the notebooks just wrote."""


def _stage(item) -> int:
    path = str(item.fspath)
    if path.endswith(".ipynb"):
        return 1
    if "test_learning_" in path:
        return 2
    return 0


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=_stage)  # stable: keeps file order inside each stage


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
        terminalreporter.write_sep("=", "notebook runtimes (nbval, tiny profile)")
        for notebook, total in sorted(seconds.items()):
            terminalreporter.write_line(f"{notebook:<32} {total:7.1f} s")
