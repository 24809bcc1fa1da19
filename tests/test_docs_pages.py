"""The documentation shows each docs_src example exactly as it is tested.

Pages include examples with the snippet syntax (`--8<-- "docs_src/<file>.py"`) and never copy
them; the README, which has no includes, copies the quick start, and the copy must match.
"""

import pathlib
import re

import esm_tasks
import esm_tasks.openapi
import esm_tasks.taskiq
import esm_tasks.testing
from tools.check_docs import problems

ROOT = pathlib.Path(__file__).parent.parent
PAGES = sorted((ROOT / "docs").rglob("*.md"))
SNIPPET = re.compile(r'^--8<-- "([^"]+?)(?::(\w+))?"$', re.MULTILINE)


def examples() -> set[str]:
    return {p.name for p in (ROOT / "docs_src").glob("*.py")} - {"__init__.py", "demo.py"}


def test_every_example_module_is_included_by_a_page() -> None:
    included = {
        pathlib.PurePath(path).name
        for page in PAGES
        for path, _ in SNIPPET.findall(page.read_text())
        if path.startswith("docs_src/")
    }
    missing = examples() - included
    assert not missing, f"examples no page includes: {sorted(missing)}"


def test_every_snippet_a_page_names_exists_with_its_section() -> None:
    for page in PAGES:
        for path, section in SNIPPET.findall(page.read_text()):
            source = ROOT / path
            assert source.is_file(), f"{page.relative_to(ROOT)} includes {path}, which is missing"
            if section:
                text = source.read_text()
                for edge in ("start", "end"):
                    marker = f"# --8<-- [{edge}:{section}]"
                    assert marker in text, f"{page.relative_to(ROOT)}: {path} has no {marker}"


def test_pages_include_python_rather_than_copy_it() -> None:
    sources = [path.read_text() for path in (ROOT / "docs_src").glob("*.py")]
    for page in PAGES:
        for block in re.findall(r"```python[^\n]*\n(.*?)```", page.read_text(), re.DOTALL):
            lines = [line for line in block.splitlines() if line.strip()]
            if lines and all(SNIPPET.fullmatch(line) for line in lines):
                continue  # an include
            # Anything else is another library's code (a migration page shows the peer's):
            # never esm_tasks code, which must be an example the tests run.
            where = page.relative_to(ROOT)
            assert "esm_tasks" not in block, f"{where} shows esm_tasks code it does not include"
            assert not any(block in source for source in sources), f"{where} copies an example"


def test_the_navigation_lists_every_page_and_only_pages_that_exist() -> None:
    assert problems() == []


def test_the_api_reference_documents_every_public_name() -> None:
    reference = (ROOT / "docs" / "reference.md").read_text()
    documented = set(re.findall(r"^::: ([\w.]+)$", reference, re.MULTILINE))
    for module in (esm_tasks, esm_tasks.testing, esm_tasks.taskiq, esm_tasks.openapi):
        missing = {f"{module.__name__}.{name}" for name in module.__all__} - documented
        assert not missing, f"the API reference leaves out {sorted(missing)}"


def test_the_readme_is_a_front_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for command in ("make test", "make run", "make docs"):
        assert command in readme
    for target in re.findall(r"\]\(((?:docs|docs_src)/[^)#]*|CHANGELOG\.md)\)", readme):
        assert (ROOT / target).exists(), f"the README links to {target}, which is missing"


def test_every_example_the_readme_embeds_matches_its_module() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"<!-- (docs_src/\w+\.py) -->\n```python\n(.*?)```", readme, re.DOTALL)
    assert [path for path, _ in blocks] == ["docs_src/quickstart.py"]
    for path, code in blocks:
        assert code == (ROOT / path).read_text(), f"README copy of {path} is out of date"


def test_every_python_snippet_in_the_readme_is_taken_from_an_example() -> None:
    readme = (ROOT / "README.md").read_text()
    sources = [path.read_text() for path in (ROOT / "docs_src").glob("*.py")]
    for snippet in re.findall(r"```python\n(.*?)```", readme, re.DOTALL):
        assert any(snippet in source for source in sources), f"not from docs_src:\n{snippet}"
