"""Each page's example works with only the install the page gives: a virtual environment of
its own, esm_tasks installed from this folder by pip with the extras the page names (from
pip's cache, or the index), and the example copied out of the repository as a user would."""

from __future__ import annotations

import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys

import httpx
import pytest

from .test_logs import free_port, wait_for
from .test_testing_docs import project_with, pytest_in

pytestmark = pytest.mark.fresh_venv

ROOT = pathlib.Path(__file__).parent.parent


def fresh_venv(tmp_path: pathlib.Path, *requirements: str) -> pathlib.Path:
    """The bin folder of a new virtual environment with only `requirements` installed."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    install = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run(
        [*install, "--disable-pip-version-check", *requirements],
        check=True,
        timeout=1200,
    )
    return venv / "bin"


def quick_start_install() -> list[str]:
    """What the quick start tells a user to install, in the clone: the same on both pages."""
    pattern = re.compile(r"^\$ pip install ([^#\n]*?)\s*(?:#.*)?$", re.MULTILINE)
    pages = [ROOT / "docs" / "index.md", ROOT / "README.md"]
    commands = [pattern.findall(page.read_text().split("## Quick start", 1)[1]) for page in pages]
    assert commands[0] == commands[1], commands
    assert len(commands[0]) == 1, commands
    return [str(ROOT) if word == "." else word for word in shlex.split(commands[0][0])]


def test_the_quick_start_under_uvicorn(tmp_path: pathlib.Path) -> None:
    install = quick_start_install()
    assert "uvicorn" in install  # the page serves the example with it
    bin_ = fresh_venv(tmp_path, *install)
    project = tmp_path / "project"
    (project / "docs_src").mkdir(parents=True)
    shutil.copy(ROOT / "docs_src" / "quickstart.py", project / "docs_src" / "quickstart.py")
    port = free_port()
    log = tmp_path / "uvicorn.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(bin_ / "uvicorn"), "docs_src.quickstart:app", "--port", str(port)],
            cwd=project,  # no esm_tasks source here: the installed package serves
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(log.read_text, "Application startup complete")
        response = httpx.post(f"http://127.0.0.1:{port}/users/ada@example.com", timeout=30)
        assert response.json() == {"created": "ada@example.com"}
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
    assert "Traceback" not in log.read_text(), log.read_text()


def test_the_testing_examples_in_a_projects_tests_under_plain_pytest(
    tmp_path: pathlib.Path,
) -> None:
    bin_ = fresh_venv(tmp_path, f"{ROOT}[testing]", "pytest")
    project = project_with(tmp_path, "testing_kit", "testing_sync", "testing_fixtures")
    assert "6 passed" in pytest_in(project, python=str(bin_ / "python"))


def test_the_observability_example_with_the_extras_its_page_names(
    tmp_path: pathlib.Path,
) -> None:
    bin_ = fresh_venv(tmp_path, f"{ROOT}[otel,prometheus]")
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "docs_src" / "observability.py", project / "observability.py")
    shutil.copy(ROOT / "tests" / "fresh" / "observe.py", project / "observe.py")
    result = subprocess.run(
        [str(bin_ / "python"), "observe.py"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "task send_welcome" in result.stdout
