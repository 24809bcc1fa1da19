"""The testing page's examples, run as its readers run them: by pytest, in a project of
their own, with no marker and no configuration."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).parent.parent


def project_with(tmp_path: pathlib.Path, *examples: str) -> pathlib.Path:
    """A new project whose tests/ folder holds copies of these docs_src examples."""
    tests = tmp_path / "project" / "tests"
    tests.mkdir(parents=True)
    for example in examples:
        shutil.copy(ROOT / "docs_src" / f"{example}.py", tests / f"test_{example}.py")
    return tests.parent


def pytest_in(project: pathlib.Path, python: str = sys.executable) -> str:
    result = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_examples_copied_into_a_projects_tests_pass_under_plain_pytest(
    tmp_path: pathlib.Path,
) -> None:
    # testing_kit's and testing_fixtures' tests are async and unmarked: esm_tasks' pytest
    # plugin runs them, and gives the fixtures.
    output = pytest_in(project_with(tmp_path, "testing_kit", "testing_sync", "testing_fixtures"))
    assert "6 passed" in output


def test_the_plugin_leaves_async_tests_that_do_not_use_esm_tasks_alone(
    tmp_path: pathlib.Path,
) -> None:
    project = project_with(tmp_path, "testing_kit")
    (project / "tests" / "test_other.py").write_text(
        "async def test_not_ours() -> None:\n    raise AssertionError('run by the plugin')\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # pytest's answer for an async test with no runner: not run, whatever pytest reports.
    assert "run by the plugin" not in result.stdout, result.stdout
    assert "2 passed" in result.stdout, result.stdout


def test_the_sync_example() -> None:
    from docs_src import testing_sync

    testing_sync.test_an_order_sends_its_receipt()
    testing_sync.test_a_failed_order_alerts_support_and_sends_no_receipt()
