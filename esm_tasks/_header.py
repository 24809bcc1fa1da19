"""The `Header` marker: a parameter read from a request header, in handlers and dependencies."""

from __future__ import annotations

import inspect
from typing import Any

EMPTY: Any = inspect.Parameter.empty


class HeaderParam:
    """What `Header(...)` leaves as a parameter's default or in its `Annotated` metadata."""

    __slots__ = ("alias", "convert_underscores", "default")

    def __init__(self, default: Any, alias: str | None, convert_underscores: bool) -> None:
        self.default = default
        self.alias = alias
        self.convert_underscores = convert_underscores

    def header_name(self, parameter: str) -> str:
        """The header this marker reads for a parameter named `parameter`, as documented."""
        if self.alias is not None:
            return self.alias
        return parameter.replace("_", "-") if self.convert_underscores else parameter

    def __repr__(self) -> str:
        parts = [] if self.default is EMPTY else [repr(self.default)]
        if self.alias is not None:
            parts.append(f"alias={self.alias!r}")
        if not self.convert_underscores:
            parts.append("convert_underscores=False")
        return f"Header({', '.join(parts)})"


def Header(
    default: Any = EMPTY, *, alias: str | None = None, convert_underscores: bool = True
) -> Any:
    """Make a parameter receive a request header, coerced to its annotation.

    The header read is `alias` if given, else the parameter's name with each underscore as a
    hyphen (`x_token` reads `X-Token`); names match whatever their case. A parameter without a
    default is required: a request without the header gets a 422 naming it. A `list[...]`
    parameter receives every value of a header sent more than once.

    `x_token: str = Header()` and `x_token: Annotated[str, Header()]` are the same; with
    `Annotated`, give a default as the parameter's own (`= None`), not to `Header`.
    """
    if default is ...:  # FastAPI's spelling of "required"
        default = EMPTY
    if alias is not None and (not isinstance(alias, str) or not alias.strip()):
        raise TypeError(f"Header(alias=...) takes a header name, got {alias!r}")
    return HeaderParam(default, alias, convert_underscores)
