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


def test_every_example_module_is_in_the_readme() -> None:
    """In the README, or included by a page of the documentation site."""
    readme = (ROOT / "README.md").read_text()
    pages = "".join(page.read_text() for page in (ROOT / "docs").rglob("*.md"))
    examples = {p.name for p in (ROOT / "docs_src").glob("*.py")} - {"__init__.py", "demo.py"}
    missing = {
        name
        for name in examples
        if f"<!-- docs_src/{name} -->" not in readme and f'--8<-- "docs_src/{name}"' not in pages
    }
    assert not missing, f"examples missing from the README and the pages: {sorted(missing)}"


def test_every_python_snippet_is_taken_from_an_example() -> None:
    readme = (ROOT / "README.md").read_text()
    sources = [path.read_text() for path in (ROOT / "docs_src").glob("*.py")]
    for snippet in re.findall(r"```python\n(.*?)```", readme, re.DOTALL):
        assert any(snippet in source for source in sources), f"not from docs_src:\n{snippet}"
