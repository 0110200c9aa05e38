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

Doors with a single credential (BFL's ``x-key``, OpenAI's Bearer token) send ``API_KEY:API_SECRET``
instead (:meth:`Authenticator.authenticate_token`). A refusal is an :class:`AuthError` whose
``failure`` says what failed; each door words it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from enum import Enum

from fluxhost.signing import KeyMode, sign_request
from fluxhost.store.keys import ActiveKey, KeyStore
from fluxhost.store.nonces import NonceStore

_NONCE = re.compile(r"[0-9]{1,40}")


class AuthFailure(Enum):
    """What failed, with a plain description (the hosted protocol has words of its own)."""

    UNKNOWN_KEY = "The API key is unknown or revoked."
    SIGNATURE_REQUIRED = "This key signs its requests: a signature and a nonce are required."
    BAD_SIGNATURE = "The signature does not match the key, or the request was accepted before."
    SECRET_REQUIRED = ("This key signs its requests: its API key alone is public. Send API_KEY:API_SECRET as the "
                       "token (or use a key-only key).")
    BAD_SECRET = "The secret does not match the key."


class AuthError(Exception):
    """A request that fails authentication."""

    def __init__(self, failure: AuthFailure):
        super().__init__(failure.value)
        self.failure = failure


@dataclass(frozen=True)
class Caller:
    """Who a request comes from."""

    key_id: int
    project_id: int
    project_name: str
    mode: KeyMode

    @classmethod
    def of(cls, key: ActiveKey) -> Caller:
        return cls(key.id, key.project_id, key.project_name, key.mode)


def request_digest(path: str, body: bytes) -> str:
    """What tells two requests apart for replay protection: SHA-256 over the path and the body."""
    return hashlib.sha256(path.encode() + b"\n" + body).hexdigest()


class Authenticator:
    """Checks a request's key and signature, and spends the nonces of state-changing calls."""

    def __init__(self, keys: KeyStore, nonces: NonceStore, nonce_window_seconds: int, nonce_retention_seconds: int):
        self._keys = keys
        self._nonces = nonces
        self.nonce_window = nonce_window_seconds
        self.nonce_retention = nonce_retention_seconds

    def authenticate(self, api_key: str | None, nonce: str | None, signature: str | None) -> Caller:
        """The caller behind these headers, or :class:`AuthError`. The nonce is checked as part of
        the signature but not spent: see :meth:`spend_nonce`."""
        key = self._key(api_key)
        if key.mode == KeyMode.KEY_ONLY:
            return Caller.of(key)
        if not nonce or not signature:
            raise AuthError(AuthFailure.SIGNATURE_REQUIRED)
        expected = sign_request(api_key, key.secret, nonce.strip())
        if not hmac.compare_digest(expected.encode(), _signature_hex(signature).encode()):
            raise AuthError(AuthFailure.BAD_SIGNATURE)
        return Caller.of(key)

    def authenticate_token(self, token: str | None) -> Caller:
        """The caller behind one token, as doors with a single credential send it: a key-only
        key's API key, or ``API_KEY:API_SECRET`` for a signature key, whose key alone is public
        (it is in every signed request) and never lets anyone in. Such doors have no nonce: what
        protects them from replay is the secret itself, as with any bearer token (use https)."""
        api_key, _, secret = (token or "").strip().partition(":")
        key = self._key(api_key)
        if key.mode == KeyMode.SIGNATURE:
            if not secret:
                raise AuthError(AuthFailure.SECRET_REQUIRED)
            if not hmac.compare_digest(secret.encode(), key.secret.encode()):
                raise AuthError(AuthFailure.BAD_SECRET)
        return Caller.of(key)

    def _key(self, api_key: str | None) -> ActiveKey:
        found = self._keys.find_active(api_key) if api_key else None
        if found is None:
            raise AuthError(AuthFailure.UNKNOWN_KEY)
        return found

    def spend_nonce(self, caller: Caller, nonce: str | None, request_digest: str) -> None:
        """Accept a state-changing call once: an exact resend (same nonce and request digest) or a
        timestamp nonce outside the window is refused."""
        if caller.mode == KeyMode.SIGNATURE and not self._spend(caller.key_id, (nonce or "").strip(), request_digest):
            raise AuthError(AuthFailure.BAD_SIGNATURE)

    def _spend(self, key_id: int, nonce: str, request_digest: str) -> bool:
        """Record the request as accepted; False when it was accepted before or its timestamp
        nonce is outside the window."""
        if not _NONCE.fullmatch(nonce):
            return False
        now = time.time()
        as_time = _nonce_time(nonce)
        if as_time is not None and abs(now - as_time) > self.nonce_window:
            return False
        return self._nonces.spend(key_id, nonce.lstrip("0") or "0", request_digest, now)

    def purge_nonces(self) -> int:
        """Forget accepted requests older than the retention period; returns how many."""
        return self._nonces.purge(time.time() - self.nonce_retention)


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
