"""A socket guard for tests that must run offline: any connection attempt raises `NetworkAttempt`."""

from __future__ import annotations

import socket

import pytest


class NetworkAttempt(AssertionError):
    """Raised by the socket guard; a test that sees it tried to reach the network."""


def refuse_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every socket connection and name lookup raise `NetworkAttempt` until `monkeypatch` undoes it."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise NetworkAttempt(f"network access attempted: {args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
