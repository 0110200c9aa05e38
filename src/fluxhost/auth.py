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

So whoever sees one signed request can make others with its headers (see the README). Strict
nonces (``strict_nonces``) narrow that to the window: every signed request, reads included, must
then carry a timestamp nonce within it, and no other nonce is taken.

Failed authentications are counted per client address and per key (:class:`AuthFailureLimit`):
past its budget, an address or a key has every request refused as rate-limited, good ones too.

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

from fluxhost.limits import NO_AUTH_FAILURE_LIMIT, AuthFailureLimit
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
    """Who a request comes from, and from which client address (when the door knows it)."""

    key_id: int
    project_id: int
    project_name: str
    mode: KeyMode
    address: str | None = None

    @classmethod
    def of(cls, key: ActiveKey, address: str | None) -> Caller:
        return cls(key.id, key.project_id, key.project_name, key.mode, address)


def request_digest(path: str, body: bytes) -> str:
    """What tells two requests apart for replay protection: SHA-256 over the path and the body."""
    return hashlib.sha256(path.encode() + b"\n" + body).hexdigest()


class Authenticator:
    """Checks a request's key and signature, and spends the nonces of state-changing calls.
    ``strict_nonces``: only timestamp nonces within the window, on every signed request."""

    def __init__(self, keys: KeyStore, nonces: NonceStore, nonce_window_seconds: int, nonce_retention_seconds: int,
                 *, strict_nonces: bool = False, failures: AuthFailureLimit = NO_AUTH_FAILURE_LIMIT):
        self._keys = keys
        self._nonces = nonces
        self.nonce_window = nonce_window_seconds
        self.nonce_retention = nonce_retention_seconds
        self.strict_nonces = strict_nonces
        self.failures = failures

    def authenticate(self, api_key: str | None, nonce: str | None, signature: str | None,
                     address: str | None = None) -> Caller:
        """The caller behind these headers, sent from ``address``, or :class:`AuthError` (or
        :class:`~fluxhost.limits.TooManyAuthFailures`). The nonce is checked as part of the
        signature but not spent: see :meth:`spend_nonce`."""
        key = self._key(api_key, address)
        if key.mode == KeyMode.KEY_ONLY:
            return Caller.of(key, address)
        if not nonce or not signature:
            raise self._failed(AuthFailure.SIGNATURE_REQUIRED, address, key.id)
        nonce = nonce.strip()
        expected = sign_request(api_key, key.secret, nonce)
        if not hmac.compare_digest(expected.encode(), _signature_hex(signature).encode()):
            raise self._failed(AuthFailure.BAD_SIGNATURE, address, key.id)
        if self.strict_nonces and not self._acceptable(nonce):
            raise self._failed(AuthFailure.BAD_SIGNATURE, address, key.id)
        return Caller.of(key, address)

    def authenticate_token(self, token: str | None, address: str | None = None) -> Caller:
        """The caller behind one token, as doors with a single credential send it: a key-only
        key's API key, or ``API_KEY:API_SECRET`` for a signature key, whose key alone is public
        (it is in every signed request) and never lets anyone in. Such doors have no nonce: what
        protects them from replay is the secret itself, as with any bearer token (use https)."""
        api_key, _, secret = (token or "").strip().partition(":")
        key = self._key(api_key, address)
        if key.mode == KeyMode.SIGNATURE:
            if not secret:
                raise self._failed(AuthFailure.SECRET_REQUIRED, address, key.id)
            if not hmac.compare_digest(secret.encode(), key.secret.encode()):
                raise self._failed(AuthFailure.BAD_SECRET, address, key.id)
        return Caller.of(key, address)

    def _key(self, api_key: str | None, address: str | None) -> ActiveKey:
        """The active key, once its address and itself are found within their failure budgets."""
        found = self._keys.find_active(api_key) if api_key else None
        self.failures.check(address, found.id if found else None)
        if found is None:
            raise self._failed(AuthFailure.UNKNOWN_KEY, address, None)
        return found

    def _failed(self, failure: AuthFailure, address: str | None, key_id: int | None) -> AuthError:
        self.failures.record(address, key_id)
        return AuthError(failure)

    def spend_nonce(self, caller: Caller, nonce: str | None, request_digest: str) -> None:
        """Accept a state-changing call once: an exact resend (same nonce and request digest) or a
        timestamp nonce outside the window is refused (in strict mode, any other nonce too)."""
        if caller.mode == KeyMode.SIGNATURE and not self._spend(caller.key_id, (nonce or "").strip(), request_digest):
            raise self._failed(AuthFailure.BAD_SIGNATURE, caller.address, caller.key_id)

    def _spend(self, key_id: int, nonce: str, request_digest: str) -> bool:
        """Record the request as accepted; False when it was accepted before or its nonce is not
        acceptable."""
        if not self._acceptable(nonce):
            return False
        return self._nonces.spend(key_id, nonce.lstrip("0") or "0", request_digest, time.time())

    def _acceptable(self, nonce: str) -> bool:
        """Digits, and a timestamp within the window when it looks like one; in strict mode, only
        such a timestamp."""
        if not _NONCE.fullmatch(nonce):
            return False
        as_time = _nonce_time(nonce)
        if as_time is None:
            return not self.strict_nonces
        return abs(time.time() - as_time) <= self.nonce_window

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
