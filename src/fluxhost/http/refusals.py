"""Every door answers refusals in its own shape; this is how a door says which shape, once.

A door's refusal table maps exception types (the operations' refusals, authentication, rate
limits, body limits, database faults...) to the response its clients expect. Starlette picks the
handler of the nearest class in an exception's MRO, so a table may name a base class and some of
its subclasses apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

Refusal = Callable[[Request, Exception], Response]
ExceptionTypes = type[Exception] | tuple[type[Exception], ...]


def answer_refusals(app: Starlette, table: Mapping[ExceptionTypes, Refusal]) -> None:
    """Answer each exception type of ``table`` (a type or a tuple of types) with its response."""
    for kinds, refusal in table.items():
        async def handler(request: Request, error: Exception, refusal: Refusal = refusal) -> Response:
            return refusal(request, error)

        for kind in kinds if isinstance(kinds, tuple) else (kinds,):
            app.add_exception_handler(kind, handler)
