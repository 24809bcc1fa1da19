"""OpenAPI for esm_tasks routes, through Lilya's own generator (`lilya.contrib.openapi`).

Lilya documents a route from the `openapi_meta` dict its `@openapi` decorator attaches to a
handler. A `TaskRoute`'s handler offers that dict, made by `operation_meta` when a document is
built: the query and header parameters of the handler and of its dependencies, the JSON body,
the route's status code, and a 422 answer when a parameter can fail validation.

That dict has no room for an extension or a path parameter's type, so `OpenAPIConfig` finishes
the document Lilya builds: it types path parameters, gives each method of a route its own
operation id, and lists under `x-background-tasks` the tasks each operation declares, in the
order they run. `App(enable_openapi=True)` uses it; a plain Lilya app takes it as
`openapi_config=OpenAPIConfig()`.

This module is imported only when OpenAPI is on.
"""

from __future__ import annotations

import contextlib
import functools
import http
import inspect
import re
from collections.abc import Iterable, Iterator
from typing import Any

from lilya.background import Task
from lilya.contrib.openapi.config import OpenAPIConfig as LilyaOpenAPIConfig
from lilya.contrib.openapi.params import ResponseParam
from pydantic import BaseModel, TypeAdapter
from pydantic.errors import PydanticInvalidForJsonSchema
from pydantic_core import PydanticSerializationError, to_jsonable_python

from ._app import App, Include
from ._binding import EMPTY
from ._merge import label_sources
from ._params import DependencyPlan, Param, Plan
from ._routing import TaskRoute
from ._tasks import BackgroundTask, BackgroundTasks, task_name

__all__ = ["OpenAPIConfig"]

Layers = tuple[tuple[str, Task], ...]
Around = tuple[tuple[str, Task] | DependencyPlan, ...]
"""What the App and Includes around a route declare: tasks, and dependencies run first."""

# The npm package swagger-ui-dist, from the CDN Lilya's own default uses: the first release
# line that reads OpenAPI 3.2.0 is 5.32; this one is pinned so that the page cannot change
# under an App.
SWAGGER_UI = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5.35.0"


class ValidationError(BaseModel):
    """One field a request got wrong."""

    loc: list[str | int]
    msg: str
    type: str


class HTTPValidationError(BaseModel):
    """The body of a 422: every field a request got wrong."""

    detail: list[ValidationError]


class OpenAPIConfig(LilyaOpenAPIConfig):
    """Lilya's `OpenAPIConfig`, whose document also says what each esm_tasks route runs.

    Each esm_tasks operation gets `x-background-tasks`: the tasks it declares, in the order
    they run (the App's, each enclosing Include's, the route's), each as
    `{"name": ..., "source": "app" | "include" | "handler"}`, or, for a `BackgroundTasks`,
    `{"tasks": [...], "as_group": ..., "source": ...}` with its members in the same form.

    Its Swagger UI is one that reads the document: Lilya writes OpenAPI 3.2.0, and the Swagger
    UI it loads by default (5.17.4) refuses any version after 3.1 ("Unable to render this
    definition"). Swagger UI reads 3.2 since 5.32. Pointing the page at a newer Swagger UI keeps
    the document as Lilya writes and checks it, rather than labelling it 3.1.0, which would
    break the day a route needs a 3.2 feature (a QUERY operation, say).
    """

    swagger_js_url: str = f"{SWAGGER_UI}/swagger-ui-bundle.js"
    swagger_css_url: str = f"{SWAGGER_UI}/swagger-ui.css"

    def openapi(self, app: Any) -> dict[str, Any]:
        document = super().openapi(app)
        paths = document.get("paths", {})
        layers = app.task_settings.background if isinstance(app, App) else ()
        effects = app.task_dependencies if isinstance(app, App) else ()
        for documented, path, route, around in _task_routes(app.routes, "", "", layers + effects):
            if route.include_in_schema and documented in paths:
                if path != documented:  # Lilya leaves out an Include's path parameters
                    paths[path] = paths.pop(documented)
                _finish(paths[path], path, route, around)
        _unique_operation_ids(paths)
        return document

    @classmethod
    def adopt(cls, config: Any) -> Any:
        """The config an App documents with: none or Lilya's own becomes this one, the fields
        it was given kept (the others take this one's defaults, its Swagger UI among them);
        anything else, this one's subclasses included, is used as given."""
        if config is None:
            return cls()
        if type(config) is LilyaOpenAPIConfig:
            return cls(**{name: getattr(config, name) for name in config.model_fields_set})
        return config


def operation_meta(route: TaskRoute) -> dict[str, Any]:
    """What Lilya's `@openapi` decorator would attach to the route's handler."""
    params = list(_params(route.plan))
    query: dict[str, dict[str, Any]] = {}
    for param in params:
        if param.source in ("query", "header"):
            # A dependency may reread one. Lilya lists these entries as they are, whatever their
            # key; a header's key has a space, which no query parameter's name can have.
            query.setdefault(_key(param), _parameter(param))
    responses = {route.status_code: ResponseParam(description=_phrase(route.status_code))}
    if any(_can_fail(param) for param in params):
        responses[422] = ResponseParam(
            annotation=HTTPValidationError, description="Invalid request"
        )
    return {
        "operation_id": route.name,
        "description": inspect.getdoc(inspect.unwrap(_function(route.fn))),
        "query": query,
        "request_body": _request_body([param for param in params if param.source == "body"]),
        "responses": responses,
    }


def _function(func: Any) -> Any:
    while isinstance(func, functools.partial):  # its own docstring is partial's
        func = func.func
    return func


def _params(plan: Plan) -> Iterator[Param]:
    """The plan's parameters, each dependency's own in its place, depth first, those of the
    dependencies it runs for their effect first."""
    for effect in plan.effects:
        yield from _params(effect.plan)
    for param in plan.params:
        if param.dependency is not None:
            yield from _params(param.dependency.plan)
        else:
            yield param


def _key(param: Param) -> str:
    """What tells two query or header parameters apart: header names ignore case."""
    return param.name if param.header is None else f"header {param.header.lower()}"


def _parameter(param: Param) -> dict[str, Any]:
    """The OpenAPI entry of a query or header parameter."""
    required = param.default is EMPTY
    schema = _schema(param.annotation, raw=True)
    if not required:
        with contextlib.suppress(PydanticSerializationError):  # a default JSON can't show
            schema["default"] = to_jsonable_python(param.default)
    if param.header is not None:
        return {"name": param.header, "in": "header", "required": required, "schema": schema}
    return {"name": param.name, "in": "query", "required": required, "schema": schema}


def _request_body(params: list[Param]) -> dict[str, Any] | None:
    if not params:
        return None
    # Each body parameter validates the whole body, so the body must satisfy them all.
    schemas = [_schema(param.annotation, raw=False) for param in params]
    return {
        "content": {
            "application/json": {"schema": schemas[0] if len(schemas) == 1 else {"allOf": schemas}}
        },
        "required": any(param.default is EMPTY for param in params),
    }


def _can_fail(param: Param) -> bool:
    """Whether a request can get a 422 over this parameter."""
    if param.source == "body":
        return True  # malformed JSON, if nothing else
    if param.source not in ("path", "query", "header"):
        return False
    # Unannotated, str and Any parameters take the raw string as it is.
    checked = not (param.annotation is EMPTY or param.annotation is str or param.annotation is Any)
    return checked or (param.source != "path" and param.default is EMPTY)


def _schema(annotation: Any, *, raw: bool) -> dict[str, Any]:
    """The JSON schema of what a parameter accepts, self-contained: Lilya's document has no
    place for definitions of ours. `raw`: the value is a string from the URL."""
    if annotation is EMPTY:
        return {"type": "string"} if raw else {}
    try:
        schema = TypeAdapter(annotation).json_schema()
    except PydanticInvalidForJsonSchema:
        return {}  # documented as anything; the route still validates it
    definitions = schema.pop("$defs", {})
    inlined: dict[str, Any] = _inline(schema, definitions, frozenset())
    return inlined


def _inline(node: Any, definitions: dict[str, Any], outer: frozenset[str]) -> Any:
    """`node` with each `#/$defs/` reference replaced by its definition. A model that contains
    itself is left open (`{}`) where it recurs."""
    if isinstance(node, list):
        return [_inline(item, definitions, outer) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        name = ref.removeprefix("#/$defs/")
        rest = {key: value for key, value in node.items() if key != "$ref"}
        target = {} if name in outer else _inline(definitions[name], definitions, outer | {name})
        return {**target, **_inline(rest, definitions, outer)}
    return {key: _inline(value, definitions, outer) for key, value in node.items()}


def _phrase(status_code: int) -> str:
    try:
        return http.HTTPStatus(status_code).phrase
    except ValueError:
        return "Successful response"


def _task_routes(
    routes: Iterable[Any], documented: str, prefix: str, layers: Around
) -> Iterator[tuple[str, str, TaskRoute, Around]]:
    """Each TaskRoute under `routes`: the path Lilya's `get_openapi` documents it at (walked
    the same way: it drops an Include's path parameters), the path it serves, and the tasks
    declared around it, the apps' and the includes'."""
    for route in routes:
        raw = getattr(route, "path_format", None) or getattr(route, "path", None)
        if not raw:
            continue
        raw = raw if raw.startswith("/") else f"/{raw}"
        if isinstance(route, TaskRoute):
            yield documented + raw, prefix + raw, route, layers
            continue
        mounted = getattr(route, "app", None)
        inner = getattr(route, "routes", None) or getattr(mounted, "routes", None)
        if not inner:
            continue
        around = layers
        if isinstance(route, Include):
            around += route.background + route.task_dependencies
        if isinstance(mounted, App):  # an App inside adds its own, after the include's
            around += mounted.task_settings.background + mounted.task_dependencies
        mount = raw.removesuffix("/{path}")
        yield from _task_routes(inner, documented + raw.split("/{", 1)[0], prefix + mount, around)


def _finish(item: dict[str, Any], path: str, route: TaskRoute, around: Around) -> None:
    """Complete the operations Lilya made for `route` at `path`."""
    methods = [method.lower() for method in route.methods or () if method != "HEAD"]
    in_path = set(re.findall(r"{(\w+)", path))
    # The App's and Includes' dependencies take their parameters as the route's own do.
    plan = route.plan.under(tuple(a for a in around if isinstance(a, DependencyPlan)))
    params = list(_params(plan))
    # An enclosing Include's path parameters are read as the route's other parameters are.
    path_types = {
        param.name: _schema(param.annotation, raw=True)
        for param in params
        if param.name in in_path and param.source in ("path", "query")
    }
    outer = params[: len(params) - len(list(_params(route.plan)))]
    outer_parameters: dict[str, dict[str, Any]] = {}
    for param in outer:
        if param.source == "header" or (param.source == "query" and param.name not in in_path):
            outer_parameters.setdefault(_key(param), _parameter(param))
    outer_can_fail = any(_can_fail(param) for param in outer)
    layers = tuple(a for a in around if not isinstance(a, DependencyPlan))
    declared = label_sources((), layers, route.background)
    for method in methods:
        operation = item.get(method)
        if operation is None:
            continue
        parameters = [
            parameter
            for parameter in operation.get("parameters", ())
            if not (parameter.get("in") == "query" and parameter.get("name") in in_path)
        ]
        listed = {_listed(parameter) for parameter in parameters}
        parameters += [
            parameter for key, parameter in outer_parameters.items() if key not in listed
        ]
        named = {parameter.get("name") for parameter in parameters if parameter.get("in") == "path"}
        parameters += [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in sorted(in_path - named)
        ]
        for parameter in parameters:
            if parameter.get("in") == "path" and parameter.get("name") in path_types:
                parameter["schema"] = path_types[parameter["name"]]
        operation["parameters"] = parameters
        responses = operation.setdefault("responses", {})
        if outer_can_fail and "422" not in responses:  # the App's or an Include's may refuse it
            schema = _schema(HTTPValidationError, raw=False)
            responses["422"] = {
                "description": "Invalid request",
                "content": {"application/json": {"schema": schema}},
            }
        if len(methods) > 1:  # Lilya names every method of a route alike
            operation["operationId"] = f"{operation.get('operationId', route.name)}_{method}"
        operation["x-background-tasks"] = [_entry(task, source) for source, task in declared]


def _listed(parameter: dict[str, Any]) -> str | None:
    """The `_key` of a parameter already on an operation: None for a path parameter's."""
    name = str(parameter.get("name"))
    where = parameter.get("in")
    return name if where == "query" else f"header {name.lower()}" if where == "header" else None


def _unique_operation_ids(paths: dict[str, Any]) -> None:
    """Make operation ids unique, as OpenAPI requires: routes whose handlers share a name, or
    one list of routes included twice, get the path and method added to the later ones."""
    seen: set[str] = set()
    for path, item in paths.items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "operationId" not in operation:
                continue
            name = operation["operationId"]
            if name in seen:
                where = re.sub(r"\W+", "_", path).strip("_")
                name = operation["operationId"] = f"{name}_{where}_{method}"
            seen.add(name)


def _entry(task: Task, source: str | None = None) -> dict[str, Any]:
    """One step of `x-background-tasks`: a task's name, or a collection's members."""
    entry: dict[str, Any]
    if isinstance(task, BackgroundTasks):
        entry = {"tasks": [_entry(member) for member in task.members()], "as_group": task.as_group}
    else:
        entry = {"name": task.name if isinstance(task, BackgroundTask) else task_name(task.func)}
    if source is not None:
        entry["source"] = source
    return entry
