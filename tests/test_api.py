"""The public surface: exactly what `__all__` names, importable from the top."""

import esm_tasks


def test_all_is_the_public_api() -> None:
    assert sorted(esm_tasks.__all__) == [
        "App",
        "BackgroundTask",
        "BackgroundTasks",
        "Depends",
        "FileResponse",
        "HTMLResponse",
        "Header",
        "Include",
        "JSONResponse",
        "PlainText",
        "RedirectResponse",
        "Response",
        "StreamingResponse",
        "TaskEvent",
        "TaskPolicy",
        "TaskRoute",
        "__version__",
        "delete",
        "get",
        "idempotency_key",
        "patch",
        "post",
        "put",
        "route",
        "task_policy",
    ]
    for name in esm_tasks.__all__:
        assert getattr(esm_tasks, name) is not None


def test_version_is_a_string() -> None:
    assert isinstance(esm_tasks.__version__, str)
    assert esm_tasks.__version__.count(".") == 2


def test_the_testing_kit_exports() -> None:
    import esm_tasks.testing

    assert sorted(esm_tasks.testing.__all__) == ["ScheduledTask", "SyncTestClient", "TestClient"]


def test_the_public_classes_extend_lilyas() -> None:
    from lilya.apps import Lilya
    from lilya.background import Task, Tasks
    from lilya.responses import Response
    from lilya.routing import Include, Path

    assert issubclass(esm_tasks.App, Lilya)
    assert issubclass(esm_tasks.Include, Include)
    assert issubclass(esm_tasks.TaskRoute, Path)
    assert issubclass(esm_tasks.BackgroundTask, Task)
    assert issubclass(esm_tasks.BackgroundTasks, Tasks)
    assert issubclass(esm_tasks.Response, Response)
