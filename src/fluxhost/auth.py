"""API keys, HMAC request signatures and nonce replay protection.

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
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import string
import time
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import bindparam, delete, insert, select
from sqlalchemy.exc import IntegrityError

from fluxhost.db import ApiKey, Database, Project, SpentRequest, make_sessionmaker

ALPHANUMERIC = string.ascii_letters + string.digits
_NONCE = re.compile(r"[0-9]{1,40}")


# Built once: composing a statement costs more than running it on SQLite.
_FIND_KEY = (
    select(ApiKey.id, ApiKey.project_id, Project.name, ApiKey.mode, ApiKey.secret)
    .join(Project, Project.id == ApiKey.project_id)
    .where(ApiKey.key_digest == bindparam("digest"), ApiKey.revoked_at.is_(None))
)
_SPEND_REQUEST = insert(SpentRequest)


class KeyMode(StrEnum):
    SIGNATURE = "signature"  # x-api-key + x-nonce + x-signature
    KEY_ONLY = "key-only"  # x-api-key alone


class AuthError(Exception):
    """A request that fails authentication; ``str(error)`` is the protocol's 401 message."""


UNKNOWN_KEY = "Project authorization is not founded."
SIGNATURE_REQUIRED = (
    "Project requires signature authentication. x-signature and x-nonce headers are required."
)
BAD_SIGNATURE = "Project authorization is not valid."


def random_token(length: int) -> str:
    """A random alphanumeric string (keys, secrets, socket tokens, access keys)."""
    return "".join(secrets.choice(ALPHANUMERIC) for _ in range(length))


def sign(api_key: str, api_secret: str, nonce: str) -> str:
    """The x-signature a client sends: hex HMAC-SHA256 keyed by the key over secret + nonce."""
    return hmac.new(api_key.encode(), (api_secret + nonce).encode(), hashlib.sha256).hexdigest()


def _digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


@dataclass(frozen=True)
class Caller:
    """Who a request comes from."""

    key_id: int
    project_id: int
    project_name: str
    mode: KeyMode


@dataclass(frozen=True)
class NewKey:
    """A key as created: the only time its secret and webhook secret are shown."""

    key_id: int
    project: str
    name: str
    mode: KeyMode
    api_key: str
    api_secret: str
    webhook_secret: str


@dataclass(frozen=True)
class KeyInfo:
    key_id: int
    project: str
    name: str
    mode: KeyMode
    prefix: str
    created_at: float
    revoked: bool


class KeyStore:
    """Projects, their keys and spent nonces, in the database."""

    def __init__(self, db: Database, nonce_window_seconds: int, nonce_retention_seconds: int):
        self._db = db
        self._sessions = make_sessionmaker(db)
        self.nonce_window = nonce_window_seconds
        self.nonce_retention = nonce_retention_seconds

    def create(self, mode: KeyMode, name: str | None = None, project: str | None = None) -> NewKey:
        """A new key for ``project`` (created when missing; default: a project of its own)."""
        api_key = random_token(32)
        api_secret = random_token(32)
        now = time.time()
        with self._sessions.begin() as session:
            project_name = project or f"project-{random_token(8).lower()}"
            record = session.scalar(select(Project).where(Project.name == project_name))
            if record is None:
                webhook_key = base64.b64encode(secrets.token_bytes(24)).decode()
                record = Project(name=project_name, webhook_secret=f"whsec_{webhook_key}", created_at=now)
                session.add(record)
                session.flush()
            key = ApiKey(
                project_id=record.id,
                name=name or project_name,
                key_digest=_digest(api_key),
                key_prefix=api_key[:8],
                secret=api_secret,
                mode=mode.value,
                created_at=now,
            )
            session.add(key)
            session.flush()
            return NewKey(key.id, record.name, key.name, mode, api_key, api_secret, record.webhook_secret)

    def list(self) -> list[KeyInfo]:
        with self._sessions() as session:
            keys = session.scalars(select(ApiKey).order_by(ApiKey.id)).all()
            return [
                KeyInfo(k.id, k.project.name, k.name, KeyMode(k.mode), k.key_prefix, k.created_at,
                        k.revoked_at is not None)
                for k in keys
            ]

    def revoke(self, key: str) -> bool:
        """Revoke by id, by the key's first characters (as ``keys list`` shows), or by the key."""
        with self._sessions.begin() as session:
            query = select(ApiKey).where(ApiKey.revoked_at.is_(None))
            if key.isdigit():
                query = query.where(ApiKey.id == int(key))
            elif len(key) > 12:
                query = query.where(ApiKey.key_digest == _digest(key))
            else:
                query = query.where(ApiKey.key_prefix == key)
            found = session.scalars(query).all()
            if len(found) != 1:
                return False
            found[0].revoked_at = time.time()
            return True

    def count_active(self) -> int:
        with self._sessions() as session:
            return len(session.scalars(select(ApiKey.id).where(ApiKey.revoked_at.is_(None))).all())

    def authenticate(self, api_key: str | None, nonce: str | None, signature: str | None) -> Caller:
        """The caller behind these headers, or :class:`AuthError` with the protocol's message.
        The nonce is checked as part of the signature but not spent: see :meth:`spend_nonce`."""
        if not api_key:
            raise AuthError(UNKNOWN_KEY)
        with self._db.read() as connection:
            key = connection.execute(_FIND_KEY, {"digest": _digest(api_key)}).first()
        if key is None:
            raise AuthError(UNKNOWN_KEY)
        caller = Caller(key.id, key.project_id, key.name, KeyMode(key.mode))
        secret = key.secret
        if caller.mode == KeyMode.KEY_ONLY:
            return caller
        if not nonce or not signature:
            raise AuthError(SIGNATURE_REQUIRED)
        expected = sign(api_key, secret, nonce.strip())
        if not hmac.compare_digest(expected.encode(), _signature_hex(signature).encode()):
            raise AuthError(BAD_SIGNATURE)
        return caller

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


def request_digest(path: str, body: bytes) -> str:
    """What tells two requests apart for replay protection: SHA-256 over the path and the body."""
    return hashlib.sha256(path.encode() + b"\n" + body).hexdigest()


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
