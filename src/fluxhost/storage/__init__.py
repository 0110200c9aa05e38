"""Task files: a local folder (the embedded default) or an S3-compatible object store, chosen in
:mod:`fluxhost.service` from settings."""

from fluxhost.storage.base import FileStore
from fluxhost.storage.local import LocalFileStore

__all__ = ["FileStore", "LocalFileStore"]
