"""Who a request comes from: API key lookup, HMAC request signatures and replay protection.

A signed request carries ``x-api-key``, ``x-nonce`` and
``x-signature = hex(HMAC_SHA256(key=API_KEY, msg=API_SECRET + NONCE))``. The signature covers
neither the path nor the body, so replay protection cannot rest on the signature alone:

- Calls that create or change something are remembered by key, nonce, path and body digest, and
  an exact resend is refused. Two different requests may share a nonce: clients that sign with
  ``date +%s`` (the hosted API's own examples, its n8n node) send two Runs in one second with one
  nonce, and both are meant.
- Timestamp-like nonces (10 digits: seconds, 13: milliseconds) must lie within the nonce window
  of the server's clock, so a captured request cannot be replayed after the window; other integers
  are accepted once per request for the retention period.
- Read-only calls only check the signature: the documented flow reuses the Run nonce for every
  Detail poll.

Plain Core statements built once: this runs on every request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass

from sqlalchemy import Row, bindparam, delete, insert, select
from sqlalchemy.exc import IntegrityError

from fluxhost.signing import KeyMode, sign_request
from fluxhost.store.database import Database
from fluxhost.store.keys import key_digest
from fluxhost.store.schema import ApiKey, Project, SpentRequest

_NONCE = re.compile(r"[0-9]{1,40}")
_FIND_KEY = (
    select(ApiKey.id, ApiKey.project_id, Project.name, ApiKey.mode, ApiKey.secret)
    .join(Project, Project.id == ApiKey.project_id)
    .where(ApiKey.key_digest == bindparam("digest"), ApiKey.revoked_at.is_(None))
)
_SPEND_REQUEST = insert(SpentRequest)

UNKNOWN_KEY = "Project authorization is not founded."
SIGNATURE_REQUIRED = (
    "Project requires signature authentication. x-signature and x-nonce headers are required."
)
BAD_SIGNATURE = "Project authorization is not valid."
# For doors with a single credential (BFL's x-key, OpenAI's Bearer token).
SECRET_REQUIRED = ("This key signs its requests: its API key alone is public. Send API_KEY:API_SECRET as the token "
                   "(or use a key-only key).")


class AuthError(Exception):
    """A request that fails authentication; ``str(error)`` is the protocol's 401 message."""


@dataclass(frozen=True)
class Caller:
    """Who a request comes from."""

    key_id: int
    project_id: int
    project_name: str
    mode: KeyMode


def request_digest(path: str, body: bytes) -> str:
    """What tells two requests apart for replay protection: SHA-256 over the path and the body."""
    return hashlib.sha256(path.encode() + b"\n" + body).hexdigest()


class Authenticator:
    """Checks a request's key and signature, and spends the nonces of state-changing calls."""

    def __init__(self, db: Database, nonce_window_seconds: int, nonce_retention_seconds: int):
        self._db = db
        self.nonce_window = nonce_window_seconds
        self.nonce_retention = nonce_retention_seconds

    def authenticate(self, api_key: str | None, nonce: str | None, signature: str | None) -> Caller:
        """The caller behind these headers, or :class:`AuthError` with the protocol's message.
        The nonce is checked as part of the signature but not spent: see :meth:`spend_nonce`."""
        key = self._key(api_key)
        caller = Caller(key.id, key.project_id, key.name, KeyMode(key.mode))
        if caller.mode == KeyMode.KEY_ONLY:
            return caller
        if not nonce or not signature:
            raise AuthError(SIGNATURE_REQUIRED)
        expected = sign_request(api_key, key.secret, nonce.strip())
        if not hmac.compare_digest(expected.encode(), _signature_hex(signature).encode()):
            raise AuthError(BAD_SIGNATURE)
        return caller

    def authenticate_token(self, token: str | None) -> Caller:
        """The caller behind one token, as doors with a single credential send it: a key-only
        key's API key, or ``API_KEY:API_SECRET`` for a signature key, whose key alone is public
        (it is in every signed request) and never lets anyone in. Such doors have no nonce: what
        protects them from replay is the secret itself, as with any bearer token (use https)."""
        api_key, _, secret = (token or "").strip().partition(":")
        key = self._key(api_key)
        caller = Caller(key.id, key.project_id, key.name, KeyMode(key.mode))
        if caller.mode == KeyMode.SIGNATURE:
            if not secret:
                raise AuthError(SECRET_REQUIRED)
            if not hmac.compare_digest(secret.encode(), key.secret.encode()):
                raise AuthError(BAD_SIGNATURE)
        return caller

    def _key(self, api_key: str | None) -> Row:
        """The key's row (id, project, name, mode, secret), or :class:`AuthError`."""
        if not api_key:
            raise AuthError(UNKNOWN_KEY)
        with self._db.read() as connection:
            key = connection.execute(_FIND_KEY, {"digest": key_digest(api_key)}).first()
        if key is None:
            raise AuthError(UNKNOWN_KEY)
        return key

    def spend_nonce(self, caller: Caller, nonce: str | None, request_digest: str) -> None:
        """Accept a state-changing call once: an exact resend (same nonce and request digest) or a
        timestamp nonce outside the window is refused."""
        if caller.mode == KeyMode.SIGNATURE and not self._spend(caller.key_id, (nonce or "").strip(), request_digest):
            raise AuthError(BAD_SIGNATURE)

    def _spend(self, key_id: int, nonce: str, request_digest: str) -> bool:
        """Record the request as accepted; False when it was accepted before or its timestamp
        nonce is outside the window."""
        if not _NONCE.fullmatch(nonce):
            return False
        now = time.time()
        as_time = _nonce_time(nonce)
        if as_time is not None and abs(now - as_time) > self.nonce_window:
            return False
        try:
            with self._db.write() as connection:
                connection.execute(_SPEND_REQUEST, {"api_key_id": key_id, "nonce": nonce.lstrip("0") or "0",
                                                    "request_digest": request_digest, "used_at": now})
        except IntegrityError:
            return False
        return True

    def purge_nonces(self) -> int:
        """Forget accepted requests older than the retention period; returns how many."""
        cutoff = time.time() - self.nonce_retention
        with self._db.write() as connection:
            return connection.execute(delete(SpentRequest).where(SpentRequest.used_at < cutoff)).rowcount


def _signature_hex(header: str) -> str:
    """The hex digest in an x-signature header. The hosted API's documented shell recipe pipes
    ``openssl dgst -hmac``, which prints ``SHA2-256(stdin)= <hex>`` (or ``(stdin)= <hex>``), and
    that whole line ends up in the header: the digest is its last word."""
    words = header.split()
    return words[-1].lower() if words else ""


def _nonce_time(nonce: str) -> float | None:
    """Unix seconds for nonces that look like timestamps (10 digits: s, 13 digits: ms)."""
    if len(nonce) == 10:
        return float(nonce)
    if len(nonce) == 13:
        return int(nonce) / 1000
    return None
