"""Background tasks declared on Lilya routes, merged with every other source, all run."""

from ._app import App, Include
from ._decorators import delete, get, patch, post, put, route
from ._depends import Depends
from ._events import TaskEvent
from ._execution import idempotency_key
from ._header import Header
from ._policy import TaskPolicy, task_policy
from ._responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainText,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from ._routing import TaskRoute
from ._tasks import BackgroundTask, BackgroundTasks

__version__ = "0.1.0"

__all__ = [
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
