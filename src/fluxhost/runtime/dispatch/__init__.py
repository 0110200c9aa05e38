"""Getting queued tasks to workers: threads in this process, a child worker process (the
embedded default), or Celery workers behind a broker; the API's composition root picks one."""

from fluxhost.runtime.dispatch.base import Dispatcher

__all__ = ["Dispatcher"]
