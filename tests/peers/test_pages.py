"""Each peer's tests point at the section of its migration page that explains a difference:
the sections exist, and every example a page includes is a file the tests run."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).parent.parent.parent
PEERS = ["starlette", "fastapi", "lilya", "esmerald", "litestar"]


@pytest.mark.parametrize("peer", PEERS)
def test_every_difference_a_test_points_at_is_a_section_of_the_page(peer: str) -> None:
    page = (ROOT / "docs" / "migrating" / f"{peer}.md").read_text()
    headings = set(re.findall(r"^#+ (.+)$", page, flags=re.MULTILINE))
    tests = (ROOT / "tests" / "peers" / f"test_{peer}.py").read_text()
    pointers = re.findall(rf'docs/migrating/{peer}\.md,\s+"([^"]+)"', tests)
    assert pointers, f"test_{peer}.py points at no section"
    assert set(pointers) <= headings, set(pointers) - headings


@pytest.mark.parametrize("peer", PEERS)
def test_every_example_a_page_includes_exists_and_is_run_by_a_test(peer: str) -> None:
    page = (ROOT / "docs" / "migrating" / f"{peer}.md").read_text()
    included = re.findall(r'--8<-- "(docs_src/[\w/]+\.py)"', page)
    assert included, f"{peer}.md includes no example"
    run = "".join(path.read_text() for path in (ROOT / "tests").rglob("test_*.py"))
    for path in included:
        assert (ROOT / path).is_file(), path
        assert (
            f'"docs_src.{pathlib.Path(path).stem}"' in run
            or f'example("{pathlib.Path(path).stem}")' in run
        ), path
