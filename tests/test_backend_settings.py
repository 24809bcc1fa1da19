"""Settings of a queue backend that make no sense are refused where they are given, in one
sentence naming the parameter and what was given, rather than accepted (a `send_timeout` of
nan or inf never times out; `strict="no"` is true) or failing later with a bare TypeError."""

from typing import Any

import pytest

from esm_tasks.taskiq import TaskiqBackend

URL = "amqp://guest:guest@127.0.0.1:5672/"  # never reached: building a backend connects nothing


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"send_timeout": float("nan")}, r"send_timeout=\.\.\.\) takes seconds.*got nan"),
        ({"send_timeout": float("inf")}, r"send_timeout=\.\.\.\) takes seconds.*got inf"),
        ({"send_timeout": True}, r"send_timeout=\.\.\.\) takes seconds.*got True"),
        ({"strict": "no"}, r"strict=\.\.\.\) takes True or False, got 'no'"),
        ({"strict": 1}, r"strict=\.\.\.\) takes True or False, got 1"),
        ({"send_before_response": "yes"}, r"send_before_response=\.\.\.\) takes True or False"),
        ({"max_message_size": True}, r"max_message_size=\.\.\.\) takes bytes.*got True"),
    ],
)
def test_the_backend_refuses_settings_that_make_no_sense(
    options: dict[str, Any], message: str
) -> None:
    broker = TaskiqBackend.from_url(URL).broker
    with pytest.raises(ValueError, match=message):
        TaskiqBackend(broker, **options)


@pytest.mark.parametrize("url", [URL, "redis://127.0.0.1:6379/0"])
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"queue": ""}, r"queue=\.\.\.\) takes a queue's name, got ''"),
        ({"queue": "  "}, r"queue=\.\.\.\) takes a queue's name, got '  '"),
        ({"queue": None}, r"queue=\.\.\.\) takes a queue's name, got None"),
        ({"max_deliveries": "5"}, r"max_deliveries=\.\.\.\) takes a whole number.*got '5'"),
        ({"max_deliveries": True}, r"max_deliveries=\.\.\.\) takes a whole number.*got True"),
        ({"max_deliveries": 2.5}, r"max_deliveries=\.\.\.\) takes a whole number.*got 2.5"),
        ({"claim_after": "30"}, r"claim_after=\.\.\.\) takes seconds.*got '30'"),
        ({"claim_after": float("nan")}, r"claim_after=\.\.\.\) takes seconds.*got nan"),
        ({"send_timeout": float("inf")}, r"send_timeout=\.\.\.\) takes seconds.*got inf"),
        ({"strict": "no"}, r"strict=\.\.\.\) takes True or False, got 'no'"),
    ],
)
def test_from_url_refuses_settings_that_make_no_sense(
    url: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        TaskiqBackend.from_url(url, **options)


def test_sensible_settings_are_taken() -> None:
    backend = TaskiqBackend.from_url(
        URL, queue="orders", claim_after=1, max_deliveries=1, send_timeout=0.5, strict=True
    )
    assert (backend.send_timeout, backend.strict) == (0.5, True)
    assert backend.broker.max_deliveries == 1  # type: ignore[attr-defined]
