"""The browser tests run only under `make test-browser` (COURSE_BROWSER_TESTS=1), not in `make test`."""

import os

if os.environ.get("COURSE_BROWSER_TESTS") != "1":
    collect_ignore_glob = ["test_*.py"]
