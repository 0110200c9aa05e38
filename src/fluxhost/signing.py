"""The HMAC signatures of the protocol, in one place for the server, the client, tests and benches.

Requests: ``x-signature = hex(HMAC_SHA256(key=API_KEY, msg=API_SECRET + NONCE))``.
Callbacks: Standard Webhooks, ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` keyed by the
project's ``whsec_`` secret. Only the standard library: the client-only install imports this.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from enum import StrEnum


class KeyMode(StrEnum):
    """How a project's key authenticates its requests."""

    SIGNATURE = "signature"  # x-api-key + x-nonce + x-signature
    KEY_ONLY = "key-only"  # x-api-key alone


def sign_request(api_key: str, api_secret: str, nonce: str) -> str:
    """The x-signature a client sends: hex HMAC-SHA256 keyed by the key over secret + nonce."""
    return hmac.new(api_key.encode(), (api_secret + nonce).encode(), hashlib.sha256).hexdigest()


def signed_headers(api_key: str, api_secret: str | None, nonce: str) -> dict[str, str]:
    """The authentication headers of one request: signed when there is a secret, else key-only."""
    if not api_secret:
        return {"x-api-key": api_key}
    return {"x-api-key": api_key, "x-nonce": nonce, "x-signature": sign_request(api_key, api_secret, nonce)}


def sign_webhook(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for a Standard Webhooks ``whsec_`` secret."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
