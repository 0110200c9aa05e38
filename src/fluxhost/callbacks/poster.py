"""One callback attempt: the body signed the Standard Webhooks way, posted with one total deadline,
never following redirects, the URL checked against the SSRF guard right before.

The deadline covers the whole attempt (the address check, connecting, sending, and the answer's
status line and headers): a receiver that drips its answer a byte at a time, or a resolver that
does not answer, cannot hold a sender longer than it (the lookup waits on a thread of its own).
The status is all a callback needs; a short answer's body is read only so that its connection can
carry the next callback to the same receiver.

Each posting thread keeps an event loop and, per destination (the checked address and the host's
name, so a connection verified for one name never carries another's callback), a client whose
connections stay open between callbacks. A loop, a client and a connection made per callback cost
more CPU than the rest of a task's path through the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import httpx

from fluxhost.signing import sign_webhook
from fluxhost.urlguard import Allowlist, UrlLookupFailed, UrlRefused, check_public_url, tls_context

CLIENTS_PER_THREAD = 16  # destinations a posting thread keeps connections to; the least recently used goes
ANSWER_READ_BYTES = 64 * 1024  # an answer's body read to keep its connection; a longer one closes it
# A connection idle longer than this is not used again: a server closes idle connections after a
# few seconds of its own (gunicorn 2, Node and uvicorn 5), and a callback sent down a connection it
# is closing at that moment fails, to be retried only after the backoff.
KEEPALIVE_SECONDS = 1.0
# Likewise for a body that does not come at once: most servers send it with the headers, but one
# that sends it apart waits for the acknowledgement of the headers (Nagle's algorithm), which the
# client's TCP delays by up to 40 ms.
ANSWER_READ_SECONDS = 0.005


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


@dataclass
class _Session:
    """A posting thread's event loop and its clients, by destination: the checked address (with
    the URL's scheme and port) and the host's name."""

    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    clients: OrderedDict[tuple[str, str], httpx.AsyncClient] = field(default_factory=OrderedDict)

    def close(self) -> None:
        for client in self.clients.values():
            self.loop.run_until_complete(client.aclose())
        self.clients.clear()
        self.loop.close()


class WebhookPoster:
    def __init__(self, allowlist: Allowlist, deadline_seconds: float):
        self.allowlist = allowlist
        self.deadline_seconds = deadline_seconds
        self._local = threading.local()
        self._sessions: list[_Session] = []
        self._sessions_lock = threading.Lock()

    def post(self, url: str, message_id: str, secret: str, body: bytes) -> Outcome:
        """POST ``body`` to ``url``, all of it within the deadline (blocks the calling thread)."""
        session = self._session()
        try:
            code = session.loop.run_until_complete(asyncio.wait_for(
                self._checked_post(session, url, message_id, secret, body), self.deadline_seconds))
        except UrlLookupFailed as error:
            return Outcome(None, f"the callback URL {error}", retry=True)
        except UrlRefused as error:
            return Outcome(None, f"the callback URL {error}", retry=False)
        except TimeoutError:
            return Outcome(None, f"no answer within {self.deadline_seconds:g} s", retry=True)
        except httpx.HTTPError as error:
            return Outcome(None, f"{type(error).__name__}: {error}", retry=True)
        if 200 <= code < 300:
            return Outcome(code, "", retry=False)
        if 300 <= code < 400:
            return Outcome(code, "redirects are not followed", retry=False)
        return Outcome(code, f"HTTP {code}", retry=code == 429 or code >= 500)

    def close(self) -> None:
        """Close every posting thread's connections and loop (once those threads are done). On a
        thread of its own: the caller may be running an event loop (the server's, shutting down),
        in which no other loop can run."""
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        closer = threading.Thread(target=lambda: [session.close() for session in sessions],
                                  name="fluxhost-poster-close")
        closer.start()
        closer.join()

    def _session(self) -> _Session:
        session = getattr(self._local, "session", None)
        if session is None or session.loop.is_closed():
            session = self._local.session = _Session()
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    async def _checked_post(self, session: _Session, url: str, message_id: str, secret: str, body: bytes) -> int:
        """The URL checked again (DNS may have changed since Run), on one of the loop's threads,
        then posted to at the address it was pinned to."""
        pinned = await session.loop.run_in_executor(None, check_public_url, url, self.allowlist)
        target = pinned.request()
        return await self._status_of_post(await self._client(session, target), target, message_id, secret, body)

    async def _client(self, session: _Session, target: dict) -> httpx.AsyncClient:
        destination = (str(target["url"].copy_with(path="/", query=None, fragment=None)),
                       target["extensions"]["sni_hostname"])
        client = session.clients.pop(destination, None)
        if client is None:
            client = httpx.AsyncClient(timeout=self.deadline_seconds, follow_redirects=False, verify=tls_context(),
                                       limits=httpx.Limits(keepalive_expiry=KEEPALIVE_SECONDS))
            if len(session.clients) >= CLIENTS_PER_THREAD:
                _, oldest = session.clients.popitem(last=False)
                await oldest.aclose()
        session.clients[destination] = client
        return client

    async def _status_of_post(self, client: httpx.AsyncClient, target: dict, message_id: str, secret: str,
                              body: bytes) -> int:
        timestamp = int(time.time())
        headers = {
            **target["headers"],
            "content-type": "application/json",
            "user-agent": "fluxhost-callbacks",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign_webhook(secret, message_id, timestamp, body),
        }
        async with client.stream("POST", target["url"], content=body, headers=headers,
                                 extensions=target["extensions"]) as response:
            with contextlib.suppress(httpx.HTTPError, TimeoutError):
                await asyncio.wait_for(_read_short_answer(response), ANSWER_READ_SECONDS)
            return response.status_code


async def _read_short_answer(response: httpx.Response) -> None:
    """Read the answer's body if it is short: a connection whose answer was read whole goes back
    to its client's pool; one left unread (too long, too slow) is closed with the response."""
    size = 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > ANSWER_READ_BYTES:
            return
