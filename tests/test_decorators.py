"""Route decorators: verbs, status codes, `background=` forms, and where routes work."""

import functools

import pytest
from lilya.apps import Lilya
from lilya.routing import Include

from esm_tasks import (
    App,
    BackgroundTask,
    BackgroundTasks,
    PlainText,
    TaskRoute,
    delete,
    get,
    patch,
    post,
    put,
    route,
)
from esm_tasks.testing import TestClient

from .support import Events

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("verb", "method", "status"),
    [
        (get, "GET", 200),
        (post, "POST", 201),
        (put, "PUT", 200),
        (patch, "PATCH", 200),
        (delete, "DELETE", 204),
    ],
)
async def test_each_verb_serves_its_method_with_esmeralds_default_status(
    verb, method, status
) -> None:  # type: ignore[no-untyped-def]
    events = Events()

    @verb("/thing", background=events.task("task"))
    async def handler() -> dict[str, str] | None:
        events.append("handler")
        return None if status == 204 else {"ok": method}

    async with TestClient(App(routes=[handler])) as http:
        response = await http.request(method, "/thing")
        wrong = await http.request("OPTIONS" if method != "OPTIONS" else "GET", "/thing")
    assert response.status_code == status
    assert response.content == (b"" if status == 204 else f'{{"ok":"{method}"}}'.encode())
    assert events == ["handler", "task"]
    assert wrong.status_code == 405


async def test_route_serves_several_methods_and_status_can_be_set() -> None:
    @route("/items", methods=["get", "POST"], status_code=202)
    async def items() -> str:
        return "x"

    @route("/other", methods=["GET", "POST"])
    async def other() -> str:
        return "y"

    async with TestClient(App(routes=[items, other])) as http:
        assert (await http.get("/items")).status_code == 202
        assert (await http.post("/items")).status_code == 202
        assert (await http.post("/other")).status_code == 200
    assert items.methods is not None
    assert {"GET", "POST"} <= set(items.methods)


def test_the_decorator_returns_an_inspectable_route() -> None:
    async def notify() -> None: ...

    task = BackgroundTask(notify)

    async def create() -> None: ...

    declared = post("/users", background=[task, notify], name="users:create")(create)
    assert isinstance(declared, TaskRoute)
    assert declared.fn is create
    assert declared.background[0] is task
    assert declared.background[1].func is notify
    assert len(declared.background) == 2
    assert declared.name == "users:create"
    assert declared.include_in_schema is True
    assert get("/hidden", include_in_schema=False)(create).include_in_schema is False
    assert declared.path == "/users"
    assert get("/x")(create).name == "create"


async def test_every_background_form_runs_in_declaration_order() -> None:
    events = Events()
    group = BackgroundTasks([events.task("g1"), events.task("g2")], as_group=True)
    form = [
        BackgroundTask(events.task("task")),
        events.task("bare function"),
        (events.sync_task("tuple member"), [events.task("nested list")]),
        BackgroundTasks([events.task("c1"), events.task("c2")]),
        group,
        None,
    ]

    @post("/all", background=form)
    async def handler() -> None:
        events.append("handler")

    async with TestClient(App(routes=[handler])) as http:
        assert (await http.post("/all")).status_code == 201
    assert events[:7] == [
        "handler",
        "task",
        "bare function",
        "tuple member",
        "nested list",
        "c1",
        "c2",
    ]
    assert sorted(events[7:]) == ["g1", "g2"]


@pytest.mark.parametrize(
    ("background", "given"),
    [
        (42, "got 42 (int)"),
        ({"a"}, "got {'a'} (set)"),
        ([BackgroundTask(print), "send"], "got 'send' (str)"),
    ],
)
def test_a_bad_background_fails_at_decoration_naming_method_and_path(background, given) -> None:  # type: ignore[no-untyped-def]
    async def handler() -> None: ...

    with pytest.raises(TypeError) as error:
        post("/register", background=background)(handler)
    assert str(error.value).startswith("POST /register: background= takes a BackgroundTask")
    assert given in str(error.value)


def test_a_function_needing_arguments_is_refused_with_advice() -> None:
    async def send_email(to: str) -> None: ...

    async def handler() -> None: ...

    with pytest.raises(
        TypeError, match=r"PUT /users/\{id\}: background=: .*send_email needs arguments"
    ):
        put("/users/{id}", background=send_email)(handler)


def test_a_coroutine_is_refused_at_decoration() -> None:
    async def send_email() -> None: ...

    async def handler() -> None: ...

    with pytest.raises(
        TypeError, match=r"GET /a: background=: got the coroutine .*send_email\(\.\.\.\)"
    ):
        get("/a", background=send_email())(handler)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda h: get("/a", status_code=99)(h), ValueError, "GET /a: status_code must be"),
        (lambda h: get("/a", response_class=dict)(h), TypeError, "GET /a: response_class must be"),  # type: ignore[arg-type]
        (lambda h: get("a")(h), ValueError, "must be a string starting with '/'"),
        (lambda h: route("/a", methods=[])(h), ValueError, "at least one HTTP method"),
        (lambda h: get("/a")(42), TypeError, "GET /a: the decorated handler must be a function"),
    ],
)
def test_bad_declarations_fail_at_decoration(make, error, message) -> None:  # type: ignore[no-untyped-def]
    async def handler() -> None: ...

    with pytest.raises(error, match=message):
        make(handler)


def _routes(events: Events) -> TaskRoute:
    @post("/orders/{order_id:int}", background=events.task("declared"))
    async def order(order_id: int, tasks: BackgroundTasks) -> dict[str, int]:
        tasks.add_task(events.task("added"))
        return {"order": order_id}

    return order


@pytest.mark.parametrize(
    ("make_app", "url"),
    [
        (lambda r: App(routes=[r]), "/orders/3"),
        (lambda r: Lilya(routes=[r]), "/orders/3"),
        (lambda r: App(routes=[Include("/api", routes=[r])]), "/api/orders/3"),
        (
            lambda r: Lilya(routes=[Include("/api", routes=[Include("/v1", routes=[r])])]),
            "/api/v1/orders/3",
        ),
    ],
)
async def test_routes_merge_in_app_include_and_plain_lilya(make_app, url) -> None:  # type: ignore[no-untyped-def]
    events = Events()
    async with TestClient(make_app(_routes(events))) as http:
        response = await http.post(url)
    assert response.json() == {"order": 3}
    assert events == ["declared", "added"]


async def test_a_path_parameter_of_an_enclosing_include_is_bound() -> None:
    @get("/users/{user_id:int}")
    async def user(tenant: str, user_id: int) -> dict[str, object]:
        return {"tenant": tenant, "user": user_id}

    app = App(routes=[Include("/tenants/{tenant}", routes=[user])])
    async with TestClient(app) as http:
        assert (await http.get("/tenants/acme/users/4")).json() == {"tenant": "acme", "user": 4}


async def test_declared_objects_are_never_mutated_by_a_request() -> None:
    events = Events()
    declared = BackgroundTasks([events.task("declared")])

    @post("/a", background=declared)
    async def handler(tasks: BackgroundTasks, label: str) -> PlainText:
        tasks.add_task(events.task(f"added {label}"))
        return PlainText("ok", background=events.task(f"own {label}"))

    async with TestClient(App(routes=[handler])) as http:
        await http.post("/a?label=1")
        await http.post("/a?label=2")
    assert events == ["declared", "added 1", "own 1", "declared", "added 2", "own 2"]
    assert len(declared.tasks) == 1
    assert handler.background == (declared,)


def test_url_path_for_uses_the_route_name() -> None:
    @get("/users/{user_id:int}", name="user")
    async def show(user_id: int) -> None: ...

    assert App(routes=[show]).path_for("user", user_id=5) == "/users/5"


def test_a_partial_handler_is_named_after_its_function() -> None:
    async def listing(kind: str) -> list[str]:
        """The items of a kind."""
        return []

    route = get("/items")(functools.partial(listing, kind="book"))
    assert route.name == "listing"
    assert repr(route).endswith(
        "-> test_a_partial_handler_is_named_after_its_function.<locals>.listing)"
    )
