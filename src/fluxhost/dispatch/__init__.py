"""Getting queued tasks to workers: threads next to the API (the embedded default) or Celery
workers behind a broker, chosen in :mod:`fluxhost.service` from settings."""

from fluxhost.dispatch.base import Dispatcher
from fluxhost.dispatch.local import LocalDispatcher

__all__ = ["Dispatcher", "LocalDispatcher"]
