"""The browser tests' fixtures (an app root and an app server per test module) and their failure reports; the
helpers they share are in ``tests.browser.harness``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.browser.harness import PAGE_TROUBLES, SERVERS, shot, streamlit_app
from tests.conftest import make_app_root

FAILURES = Path(__file__).resolve().parents[2] / "test-output" / "failures"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed browser test gets, in its report, the Python stacks (py-spy, where installed) and the end of
    the log of each app server running in its process (what the server was doing when the page did not
    answer), a screenshot of its page in test-output/failures/ and the requests of the page that failed."""
    report = yield
    if not (report.failed and call.when == "call"):
        return report
    for url, (pid, log) in list(SERVERS.items()):
        if shutil.which("py-spy"):
            try:
                dump = subprocess.run(["py-spy", "dump", "--pid", str(pid)], capture_output=True, text=True,
                                      timeout=30)
                report.sections.append((f"app server {url} stacks (py-spy dump)", dump.stdout + dump.stderr))
            except (OSError, subprocess.TimeoutExpired) as e:
                report.sections.append((f"app server {url} stacks (py-spy dump)", f"no dump: {e}"))
        report.sections.append((f"app server {url} log (end)", log.read_text(errors="replace")[-4000:]))
    page = getattr(item, "funcargs", {}).get("page")
    if page is not None:
        try:
            shot(page, FAILURES, item.name.replace("/", "_")[:120])
            report.sections.append(("page", f"{page.url}; screenshot in {FAILURES}"))
            report.sections.append(("page's failed requests", "\n".join(PAGE_TROUBLES.get(id(page), [])) or "none"))
        except Exception as e:  # noqa: BLE001 - a page that is gone: the report says so
            report.sections.append(("page", f"no screenshot: {e}"))
    return report


@pytest.fixture(scope="module")
def app_root(tmp_path_factory, tiny_data, tiny_world_model) -> Path:
    """A temporary app root with the tiny data and world model; its leaderboard is board.sqlite3 in it."""
    return make_app_root(tmp_path_factory.mktemp("browser_root"), tiny_data, tiny_world_model)


@pytest.fixture(scope="module")
def app_url(app_root):
    """The app served over ``app_root``, one server per test module."""
    with streamlit_app(app_root) as url:
        yield url
