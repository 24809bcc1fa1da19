"""The README shows each docs_src example exactly as it is tested."""

import pathlib
import re

ROOT = pathlib.Path(__file__).parent.parent


def test_every_embedded_example_matches_its_module() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"<!-- (docs_src/\w+\.py) -->\n```python\n(.*?)```", readme, re.DOTALL)
    assert len(blocks) >= 11
    for path, code in blocks:
        assert code == (ROOT / path).read_text(), f"README copy of {path} is out of date"


def _included_by_pages() -> set[str]:
    """The files the documentation pages include with `--8<-- "path"`."""
    pages = (ROOT / "docs").rglob("*.md")
    return {
        included
        for page in pages
        for included in re.findall(r'^\s*--8<-- "([^"]+)"', page.read_text(), re.MULTILINE)
    }


def test_every_example_module_is_in_the_readme_or_a_page() -> None:
    readme = (ROOT / "README.md").read_text()
    included = _included_by_pages()
    examples = {p.name for p in (ROOT / "docs_src").glob("*.py")} - {"__init__.py", "demo.py"}
    missing = {
        name
        for name in examples
        if f"<!-- docs_src/{name} -->" not in readme and f"docs_src/{name}" not in included
    }
    assert not missing, f"examples missing from the README and the pages: {sorted(missing)}"


def test_every_file_a_page_includes_exists() -> None:
    missing = {path for path in _included_by_pages() if not (ROOT / path).is_file()}
    assert not missing, f"pages include files that do not exist: {sorted(missing)}"


def test_every_python_snippet_is_taken_from_an_example() -> None:
    readme = (ROOT / "README.md").read_text()
    sources = [path.read_text() for path in (ROOT / "docs_src").glob("*.py")]
    for snippet in re.findall(r"```python\n(.*?)```", readme, re.DOTALL):
        assert any(snippet in source for source in sources), f"not from docs_src:\n{snippet}"
