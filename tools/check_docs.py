"""What `make docs` checks before Zensical builds the site, which it does not check itself yet:
every page the navigation lists exists, and every page under docs/ is in the navigation.

Run: python -m tools.check_docs (exits 1, naming each problem, if there is one).
"""

from __future__ import annotations

import pathlib
import sys
import tomllib
from collections.abc import Iterator
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent


def nav_pages(entries: list[Any], section: str = "") -> Iterator[tuple[str, str]]:
    """Each page of a Zensical `nav`, with its title: a path alone (a section's index page,
    titled as its section), or a title mapped to a path or to a section's entries."""
    for entry in entries:
        if isinstance(entry, str):
            yield section, entry
        elif isinstance(entry, dict):
            for title, value in entry.items():
                if isinstance(value, list):
                    yield from nav_pages(value, title)
                else:
                    yield title, value


def load_nav(root: pathlib.Path = ROOT) -> list[tuple[str, str]]:
    """The title and path of every page in the navigation, in its order."""
    config = tomllib.loads((root / "zensical.toml").read_text())["project"]
    return list(nav_pages(config["nav"]))


def problems(root: pathlib.Path = ROOT) -> list[str]:
    config = tomllib.loads((root / "zensical.toml").read_text())["project"]
    docs = root / config.get("docs_dir", "docs")
    listed = [page for _, page in load_nav(root)]
    found = []
    for page in listed:
        if not (docs / page).is_file():
            found.append(f"zensical.toml lists {page} in its nav, and docs/{page} does not exist")
    on_disk = {str(path.relative_to(docs)) for path in docs.rglob("*.md")}
    for page in sorted(on_disk - set(listed)):
        found.append(f"docs/{page} is not in the nav of zensical.toml")
    return found


def main() -> int:
    found = problems()
    for problem in found:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
