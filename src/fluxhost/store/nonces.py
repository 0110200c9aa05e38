"""Requests already accepted, remembered so that an exact resend is refused (replay protection:
see :mod:`fluxhost.auth`)."""

from __future__ import annotations

from sqlalchemy import delete, insert
from sqlalchemy.exc import IntegrityError

from fluxhost.store.database import Database
from fluxhost.store.schema import SpentRequest

_SPEND = insert(SpentRequest)  # built once: every state-changing request spends one


class NonceStore:
    def __init__(self, db: Database):
        self._db = db

    def spend(self, key_id: int, nonce: str, request_digest: str, now: float) -> bool:
        """Record a request as accepted; False when the same key sent the same nonce and request
        before. ``nonce``: digits, without leading zeros."""
        try:
            with self._db.write() as connection:
                connection.execute(_SPEND, {"api_key_id": key_id, "nonce": nonce, "request_digest": request_digest,
                                            "used_at": now})
        except IntegrityError:
            return False
        return True

    def purge(self, before: float) -> int:
        """Forget requests accepted before ``before``; returns how many."""
        with self._db.write() as connection:
            return connection.execute(delete(SpentRequest).where(SpentRequest.used_at < before)).rowcount
