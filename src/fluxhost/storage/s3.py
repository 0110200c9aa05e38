"""Task files in an S3-compatible object store (AWS S3, MinIO, SeaweedFS, R2...), through boto3.

Clients download straight from the store, by one of two kinds of URL:

- ``presigned``: a signed GET that works until it expires (the bucket stays private); every
  answer carries a fresh one.
- ``public``: a plain URL under ``public_url`` (a CDN, or the bucket's own address when its
  objects are publicly readable), unchanging, like the hosted service's CDN links.

Objects are written once and never change: they are stored with an immutable cache header.
"""

from __future__ import annotations

import mimetypes
from urllib.parse import urlsplit

from fluxhost.storage.base import new_folder, well_formed

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
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        self._client.put_object(Bucket=self.bucket, Key=self._key(folder, name), Body=data,
                                ContentType=content_type, CacheControl=IMMUTABLE)

    def read(self, folder: str, name: str) -> bytes | None:
        if not well_formed(folder, name):
            return None
        try:
            answer = self._client.get_object(Bucket=self.bucket, Key=self._key(folder, name))
        except self._missing:
            return None
        return answer["Body"].read()

    def url(self, folder: str, name: str) -> str:
        key = self._key(folder, name)
        if self.url_mode == "public":
            return f"{self.public_url}/{key}"
        return self._signer.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.url_seconds
        )

    def delete(self, folder: str, name: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self._key(folder, name))

    def clear(self, folder: str) -> None:
        prefix = self._key(folder, "any").removesuffix("any")
        listed = self._client.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        keys = [{"Key": item["Key"]} for item in listed.get("Contents", [])]
        if keys:
            self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})

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
