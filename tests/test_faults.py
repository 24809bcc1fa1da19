"""The fault proxy itself: each outage it stages is the one a client sees."""

from __future__ import annotations

import socket

import pytest
import redis

from .faults import fault_proxy


def _client(port: int, timeout: float = 1.0) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=timeout, retry=None)


def test_it_forwards_until_told_otherwise() -> None:
    with fault_proxy("127.0.0.1", 6379) as proxy:
        client = _client(proxy.port)
        assert client.ping()
        assert proxy.connections == 1
        client.close()


def test_a_stall_holds_the_bytes_and_a_restore_delivers_them() -> None:
    with fault_proxy("127.0.0.1", 6379) as proxy:
        client = _client(proxy.port, timeout=0.5)
        assert client.ping()
        proxy.stall()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        # A new connection is accepted, as the kernel would, and held as well.
        fresh = _client(proxy.port, timeout=0.5)
        with pytest.raises(redis.TimeoutError):
            fresh.ping()
        proxy.restore()
        assert _client(proxy.port).ping()
        client.close()
        fresh.close()


def test_a_cut_resets_open_connections_and_lets_new_ones_through() -> None:
    with fault_proxy("127.0.0.1", 6379) as proxy:
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        sock.sendall(b"PING\r\n")
        assert sock.recv(64) == b"+PONG\r\n"
        proxy.cut()
        with pytest.raises(ConnectionResetError):
            sock.recv(64)  # an RST, not an orderly close (which would read b"")
        sock.close()
        assert _client(proxy.port).ping()


def test_refusing_refuses_until_restored_on_the_same_port() -> None:
    with fault_proxy("127.0.0.1", 6379) as proxy:
        port = proxy.port
        proxy.refuse()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
        proxy.restore()
        assert proxy.port == port
        assert _client(port).ping()


def test_its_url_keeps_the_credentials_and_path() -> None:
    with fault_proxy("127.0.0.1", 5672) as proxy:
        assert proxy.url("amqp://guest:guest@127.0.0.1:5672/vhost") == (
            f"amqp://guest:guest@127.0.0.1:{proxy.port}/vhost"
        )
        assert proxy.url("redis://localhost:6379/0") == f"redis://127.0.0.1:{proxy.port}/0"
