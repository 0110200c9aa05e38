"""One callback attempt: the body signed the Standard Webhooks way, posted with one total deadline,
never following redirects, the URL checked against the SSRF guard right before.

The deadline covers the whole attempt (the address check, connecting, sending, and the answer's
status line and headers): a receiver that drips its answer a byte at a time cannot hold a sender
longer than it. The answer's body is never read, since its status is all a callback needs.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx

from fluxhost.signing import sign_webhook
from fluxhost.urlguard import Allowlist, UrlRefused, check_public_url, tls_context


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
    def __init__(self, allowlist: Allowlist, deadline_seconds: float):
        self.allowlist = allowlist
        self.deadline_seconds = deadline_seconds

    def post(self, url: str, message_id: str, secret: str, body: bytes) -> Outcome:
        """POST ``body`` to ``url``, all of it within the deadline (blocks the calling thread)."""
        started = time.monotonic()
        try:
            pinned = check_public_url(url, self.allowlist)  # again: DNS may have changed since Run
        except UrlRefused as error:
            return Outcome(None, f"the callback URL {error}", retry=False)
        timed_out = Outcome(None, f"no answer within {self.deadline_seconds:g} s", retry=True)
        left = self.deadline_seconds - (time.monotonic() - started)
        if left <= 0:
            return timed_out
        try:
            code = asyncio.run(asyncio.wait_for(self._status_of_post(pinned.request(), message_id, secret, body),
                                                left))
        except TimeoutError:
            return timed_out
        except httpx.HTTPError as error:
            return Outcome(None, f"{type(error).__name__}: {error}", retry=True)
        if 200 <= code < 300:
            return Outcome(code, "", retry=False)
        if 300 <= code < 400:
            return Outcome(code, "redirects are not followed", retry=False)
        return Outcome(code, f"HTTP {code}", retry=code == 429 or code >= 500)

    async def _status_of_post(self, target: dict, message_id: str, secret: str, body: bytes) -> int:
        timestamp = int(time.time())
        headers = {
            **target["headers"],
            "content-type": "application/json",
            "user-agent": "fluxhost-callbacks",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign_webhook(secret, message_id, timestamp, body),
        }
        async with httpx.AsyncClient(timeout=self.deadline_seconds, follow_redirects=False,
                                     verify=tls_context()) as client, \
                client.stream("POST", target["url"], content=body, headers=headers,
                              extensions=target["extensions"]) as response:
            return response.status_code
