"""Task files in an S3-compatible object store (AWS S3, MinIO, SeaweedFS, R2...), through boto3.

Clients download straight from the store, by one of two kinds of URL:

- ``presigned``: a signed GET that works until it expires (the bucket stays private); every
  answer carries a fresh one.
- ``public``: a plain URL under ``public_url`` (a CDN, or the bucket's own address when its
  objects are publicly readable), unchanging, like the hosted service's CDN links.

Objects are written once and never change: they are stored with an immutable cache header.

A store that refuses (a missing bucket, a denied key) or cannot be reached raises :class:`OSError`,
as a disk would, naming the store's error code and never a key (a key holds a URL's secret part).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from fluxhost.storage.base import content_type, new_folder, well_formed

log = logging.getLogger(__name__)

IMMUTABLE = "public, max-age=31536000, immutable"
# The longest a SigV4 presigned URL may live.
MAX_PRESIGNED_SECONDS = 7 * 24 * 3600


class S3FileStore:
    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        public_endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        prefix: str = "",
        url_mode: str = "presigned",
        public_url: str | None = None,
        url_seconds: int = MAX_PRESIGNED_SECONDS,
        path_style: bool = False,
    ):
        """``public_endpoint_url``: the store's address as clients reach it, when it differs from
        ours (``http://s3:8333`` inside a compose network, ``https://s3.example.com`` outside):
        URLs are signed for that host. ``access_key_id``/``secret_access_key`` None: boto3's own
        lookup (environment, profile, instance role). ``prefix``: prepended to every key
        (``"fluxhost/"``). ``public_url``: the base of public URLs (default: the bucket's address).
        ``path_style``: address the bucket as ``endpoint/bucket/key`` (most self-hosted stores)."""
        import boto3
        from botocore.config import Config

        if url_mode not in ("presigned", "public"):
            raise ValueError(f"url_mode must be presigned or public, not {url_mode!r}")
        self.bucket = bucket
        self.prefix = prefix
        self.url_mode = url_mode
        self.url_seconds = min(url_seconds, MAX_PRESIGNED_SECONDS)
        config = Config(signature_version="s3v4", s3={"addressing_style": "path" if path_style else "auto"},
                        retries={"mode": "standard", "max_attempts": 3})

        def client(endpoint: str | None):
            return boto3.client("s3", endpoint_url=endpoint, region_name=region, aws_access_key_id=access_key_id,
                                aws_secret_access_key=secret_access_key, config=config)

        self._client = client(endpoint_url)
        self._signer = client(public_endpoint_url) if public_endpoint_url else self._client  # never connects
        self._missing = (self._client.exceptions.NoSuchKey,)
        bucket_url = self._bucket_url()
        self.public_url = (public_url or bucket_url).rstrip("/")
        self._bases = {self.public_url + "/", bucket_url}  # what a URL of ours starts with, query aside

    def new_folder(self) -> str:
        return new_folder()

    def save(self, folder: str, name: str, data: bytes) -> None:
        key = self._key(folder, name)
        with answered("store a file"):
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type(name),
                                    CacheControl=IMMUTABLE)

    def read(self, folder: str, name: str) -> bytes | None:
        if not well_formed(folder, name):
            return None
        with answered("read a file"):
            try:
                answer = self._client.get_object(Bucket=self.bucket, Key=self._key(folder, name))
            except self._missing:
                return None
            return answer["Body"].read()

    def local_path(self, folder: str, name: str) -> None:
        return None  # the bucket's: clients download from it

    def url(self, folder: str, name: str) -> str:
        key = self._key(folder, name)
        if self.url_mode == "public":
            return f"{self.public_url}/{key}"
        return self._signer.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.url_seconds
        )

    def delete(self, folder: str, name: str) -> None:
        key = self._key(folder, name)
        with answered("delete a file"):
            self._client.delete_object(Bucket=self.bucket, Key=key)

    def clear(self, folder: str) -> None:
        """Every object under the folder's prefix, a listing page (at most 1,000, as many as one
        DeleteObjects takes) at a time: a training's folder may hold more."""
        prefix = self._key(folder, "any").removesuffix("any")
        with answered("delete a folder"):
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:
                    answer = self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
                    if failed := answer.get("Errors"):
                        raise OSError(errno.EIO, f"the object store kept {len(failed)} object(s): "
                                                 f"{failed[0].get('Code') or 'an error'}")

    def find(self, url: str) -> tuple[str, str] | None:
        parts = urlsplit(url)
        bare = f"{parts.scheme}://{parts.netloc}{parts.path}"
        for base in self._bases:
            if bare.startswith(base + self.prefix):
                folder, _, name = bare[len(base + self.prefix):].partition("/")
                return (folder, name) if well_formed(folder, name) else None
        return None

    def _key(self, folder: str, name: str) -> str:
        if not well_formed(folder, name):
            raise ValueError("malformed file reference")
        return f"{self.prefix}{folder}/{name}"

    def _bucket_url(self) -> str:
        """The bucket's address as clients reach it, ending in ``/``, spelled in the addressing style."""
        signed = self._signer.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": "k"},
                                                     ExpiresIn=60)
        return signed.split("?", 1)[0].removesuffix("k")


@contextmanager
def answered(action: str) -> Iterator[None]:
    """botocore's failures as the :class:`OSError` every caller of a file store handles; its words
    are the store's error code or botocore's kind of failure, never its message (which may hold
    the URL, and so the key)."""
    try:
        yield
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code") or "an error"
        log.warning("the object store refused to %s: %s", action, code)
        raise OSError(errno.EIO, f"the object store answered {code}") from None
    except BotoCoreError as error:
        log.warning("the object store could not %s: %s", action, type(error).__name__)
        raise OSError(errno.EIO, f"the object store could not be reached ({type(error).__name__})") from None
