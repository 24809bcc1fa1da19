"""A connection cut is not a worker death. RabbitMQ delivers again, counted, what a worker
held when its connection went; the worker remembers what it held and takes each back
uncounted: not quarantined (run alone, serially), not charged toward max_deliveries.

Staged through the TCP proxy (tests/faults.py) between the worker and the broker; nothing
is done to the brokers themselves.
"""

from __future__ import annotations

import pathlib
import signal

import httpx
import pytest

from .support import serve
from .test_queue_brokers import BROKERS, _app_on
from .test_queue_outages import log, proxied, ran, wait_for, worker


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_runs_held_at_a_cut_come_back_uncounted_and_not_quarantined(
    broker: str, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """Two runs are going (the worker's whole concurrency) and five wait on the broker when
    the worker's connections are cut.

    Lost: nothing; the worker is the same process throughout. Ran twice: on RabbitMQ, the
    two runs that were going, as their acknowledgements went with the connection and
    RabbitMQ delivered them again (at-least-once); each runs the second time as a run
    delivered once, not alone. The runs that waited ran once. On Redis, nothing ran twice: the
    worker keeps what it holds.
    """
    environment, app = _app_on(broker, monkeypatch, tmp_path)
    out = environment["ESM_TASKS_TEST_OUT"]
    twice = 2 if broker == "rabbitmq" else 1
    with proxied(broker) as proxy:
        through = {**environment, "ESM_TASKS_TEST_BROKER": proxy.url(BROKERS[broker])}
        with worker(through, "--concurrency", "2") as process, serve(app, lifespan="on") as url:
            for name in ("a", "b"):
                assert httpx.post(f"{url}/slow/{name}").status_code == 201
            wait_for(
                lambda: {("started", "a"), ("started", "b")} <= set(ran(environment)),
                "both runs to start",
            )
            for number in range(5):
                assert httpx.post(f"{url}/work/q{number}").status_code == 201
            proxy.cut()
            pathlib.Path(f"{out}.go").touch()  # the runs going at the cut finish after it
            wanted = {("added", f"q{number}") for number in range(5)}
            wait_for(
                lambda: (
                    wanted <= set(ran(environment))
                    and ran(environment).count(("finished", "a")) == twice
                    and ran(environment).count(("finished", "b")) == twice
                ),
                "every run",
                deadline=90,
            )
            assert process.poll() is None, log(process)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0
    text = log(process)
    records = ran(environment)
    for name in ("a", "b"):
        assert records.count(("started", name)) == twice, records
        assert records.count(("finished", name)) == twice, records
    assert sorted(r for r in records if r[0] == "added") == sorted(wanted), records
    assert "quarantined" not in text, text
    assert "dead letter" not in text, text
    assert "Traceback" not in text


def test_a_run_caught_in_more_cuts_than_max_deliveries_is_not_a_dead_letter(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """RabbitMQ, max_deliveries=1: a run going when the worker's connection is cut, twice.
    Each cut's redelivery is not counted, so the run is not dead-lettered as one that killed
    its workers.

    Lost: nothing. Ran three times: the run, once per connection (its acknowledgement went
    with each cut connection, and RabbitMQ delivered it again: at-least-once).
    """
    environment, app = _app_on("rabbitmq", monkeypatch, tmp_path, ESM_TASKS_TEST_MAX_DELIVERIES="1")
    out = environment["ESM_TASKS_TEST_OUT"]
    with proxied("rabbitmq") as proxy:
        through = {**environment, "ESM_TASKS_TEST_BROKER": proxy.url(BROKERS["rabbitmq"])}
        with worker(through) as process, serve(app, lifespan="on") as url:
            assert httpx.post(f"{url}/slow/a").status_code == 201
            for times in (1, 2):
                wait_for(
                    lambda times=times: ran(environment).count(("started", "a")) == times,
                    f"the run to start {times} time(s)",
                )
                proxy.cut()
            wait_for(lambda: ran(environment).count(("started", "a")) == 3, "the third start")
            pathlib.Path(f"{out}.go").touch()
            wait_for(lambda: ran(environment).count(("finished", "a")) == 3, "every run")
            assert process.poll() is None, log(process)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0
    text = log(process)
    assert ran(environment).count(("started", "a")) == 3
    assert "dead letter" not in text, text
    assert "quarantined" not in text, text
