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
