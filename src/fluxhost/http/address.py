"""Where a request comes from, as the failed-authentication budgets count it."""

from __future__ import annotations

from starlette.requests import HTTPConnection


def client_address(connection: HTTPConnection) -> str | None:
    """The client's address as the server sees it: the peer's, or, behind a proxy that uvicorn
    trusts (``FORWARDED_ALLOW_IPS``), the one its ``X-Forwarded-For`` names. None when unknown."""
    return connection.client.host if connection.client else None
