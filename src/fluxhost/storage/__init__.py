"""Task files: a local folder (the embedded default) or an S3-compatible object store."""

from fluxhost.settings import Settings
from fluxhost.storage.base import FileStore
from fluxhost.storage.local import LocalFileStore

__all__ = ["FileStore", "LocalFileStore", "open_file_store"]


def open_file_store(settings: Settings) -> FileStore:
    """The file store the settings name."""
    if settings.storage == "local":
        return LocalFileStore(settings.files_dir, settings.resolved_public_url)
    from fluxhost.storage.s3 import S3FileStore

    secret = settings.s3_secret_access_key
    return S3FileStore(
        settings.s3_bucket, endpoint_url=settings.s3_endpoint_url,
        public_endpoint_url=settings.s3_public_endpoint_url, region=settings.s3_region,
        access_key_id=settings.s3_access_key_id, secret_access_key=secret.get_secret_value() if secret else None,
        prefix=settings.s3_prefix, url_mode=settings.s3_url_mode, public_url=settings.s3_public_url,
        url_seconds=settings.s3_url_seconds, path_style=settings.s3_path_style,
    )
