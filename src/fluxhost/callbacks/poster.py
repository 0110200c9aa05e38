"""One callback attempt: the body signed the Standard Webhooks way, posted with bounded time and
reads, never following redirects, the URL checked against the SSRF guard right before."""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx

from fluxhost.signing import sign_webhook
from fluxhost.urlguard import Allowlist, UrlRefused, check_public_url

MAX_RESPONSE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Outcome:
    """What one POST came to: the answer's status code (None without one), an error text, and
    whether trying again later may help (connection errors, timeouts, 429, 5xx)."""

    status_code: int | None
    error: str
    retry: bool

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class WebhookPoster:
    def __init__(self, allowlist: Allowlist, timeout_seconds: float):
        self.allowlist = allowlist
        self.timeout = httpx.Timeout(timeout_seconds, connect=min(5.0, timeout_seconds))

    def post(self, url: str, message_id: str, secret: str, body: bytes) -> Outcome:
        try:
            pinned = check_public_url(url, self.allowlist)  # again: DNS may have changed since Run
        except UrlRefused as error:
            return Outcome(None, f"the callback URL {error}", retry=False)
        timestamp = int(time.time())
        target = pinned.request()
        headers = {
            **target["headers"],
            "content-type": "application/json",
            "user-agent": "fluxhost-callbacks",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign_webhook(secret, message_id, timestamp, body),
        }
        try:
            with httpx.Client(timeout=self.timeout, follow_redirects=False) as client, client.stream(
                "POST", target["url"], content=body, headers=headers, extensions=target["extensions"]
            ) as response:
                read = 0
                for chunk in response.iter_bytes():
                    read += len(chunk)
                    if read >= MAX_RESPONSE_BYTES:
                        break
        except httpx.TimeoutException:
            return Outcome(None, "timed out", retry=True)
        except httpx.HTTPError as error:
            return Outcome(None, f"{type(error).__name__}: {error}", retry=True)
        code = response.status_code
        if 200 <= code < 300:
            return Outcome(code, "", retry=False)
        if 300 <= code < 400:
            return Outcome(code, "redirects are not followed", retry=False)
        return Outcome(code, f"HTTP {code}", retry=code == 429 or code >= 500)
