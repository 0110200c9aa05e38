"""Projects and their API keys: create, list, revoke.

The key itself is stored only as its SHA-256 digest; the secret is kept as given, because
signature checks need it (HMAC over secret + nonce).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import bindparam, select

from fluxhost.signing import KeyMode
from fluxhost.store.database import Database, make_sessionmaker
from fluxhost.store.schema import ApiKey, Project, random_token

_FIND_KEY = (
    select(ApiKey.id, ApiKey.project_id, Project.name, ApiKey.mode, ApiKey.secret)
    .join(Project, Project.id == ApiKey.project_id)
    .where(ApiKey.key_digest == bindparam("digest"), ApiKey.revoked_at.is_(None))
)  # built once: every request reads a key


def key_digest(api_key: str) -> str:
    """What the database keeps of a key."""
    return hashlib.sha256(api_key.encode()).hexdigest()


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
class ActiveKey:
    """What checking a request needs of its key."""

    id: int
    project_id: int
    project_name: str
    mode: KeyMode
    secret: str


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
    """Projects and their keys: created, listed and revoked by administration; found by the
    request path (:class:`fluxhost.auth.Authenticator`)."""

    def __init__(self, db: Database):
        self._db = db
        self._sessions = make_sessionmaker(db)

    def find_active(self, api_key: str) -> ActiveKey | None:
        """The key behind ``api_key``, unless it is unknown or revoked."""
        with self._db.read() as connection:
            found = connection.execute(_FIND_KEY, {"digest": key_digest(api_key)}).first()
        return None if found is None else ActiveKey(found.id, found.project_id, found.name, KeyMode(found.mode),
                                                    found.secret)

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
                key_digest=key_digest(api_key),
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
                query = query.where(ApiKey.key_digest == key_digest(key))
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
