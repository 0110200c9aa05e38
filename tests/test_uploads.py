"""Uploads are records: File/Upload's files are listed and deleted by their project only, held to
a quota, expired by the janitor, refused cleanly on a full disk; Runs take them until deleted."""

from __future__ import annotations

import asyncio
import errno
import io
import os
import random
import secrets
import socket
import sqlite3
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from fluxhost import archives
from fluxhost.archives import ArchiveRefused
from fluxhost.archives import members as archive_members
from fluxhost.client import AsyncClient, Client, ProtocolError
from fluxhost.loras import is_safetensors
from fluxhost.settings import ModelSettings, Settings
from fluxhost.signing import KeyMode
from fluxhost.storage.local import LocalFileStore
from fluxhost.store.database import Database
from fluxhost.store.keys import KeyStore
from tests.helpers import LiveServer, ProtocolClient, free_port, held, sent_while_waiting

KONTEXT = "black-forest-labs/flux-kontext-pro"
NO_FILE = [{"code": 1, "message": "There is no such file."}]
NO_ROOM = ("The server has no room left to store files: retry later, or ask its operator to free space on its "
           "disk.")
BOUNDARY = "upload-test-boundary"


def picture(colour: str = "orange") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(data: bytes, filename: str) -> tuple[bytes, str]:
    """A File/Upload body with a fixed boundary, so that the very same request can be sent again."""
    head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: image/png\r\n\r\n").encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode(), f"multipart/form-data; boundary={BOUNDARY}"


def send_upload(client: ProtocolClient, data: bytes, filename: str = "photo.png",
                headers: dict[str, str] | None = None) -> httpx.Response:
    content, content_type = multipart(data, filename)
    return httpx.post(f"{client.base_url}/v1/File/Upload", content=content, timeout=30,
                      headers={**(headers or client.headers()), "content-type": content_type})


def upload(client: ProtocolClient, data: bytes, filename: str = "photo.png") -> dict[str, str]:
    answer = send_upload(client, data, filename)
    assert answer.status_code == 200 and answer.json()["result"] is True, answer.text
    [entry] = answer.json()["list"]
    return entry


def stored_files(live: LiveServer) -> list[Path]:
    return [path for path in live.settings.files_dir.rglob("*") if path.is_file()]


@pytest.fixture
def start_server(tmp_path: Path, database_url: str | None) -> Callable[..., LiveServer]:
    """A server with an editing model on the bench engine and no worker: Runs are checked and
    queued, never run (no pipeline to load)."""

    def start(**overrides) -> LiveServer:
        settings = Settings(data_dir=tmp_path / "data", database_url=database_url, host="127.0.0.1",
                            port=free_port(), engine="bench", worker_concurrency=0, worker_process=False,
                            models={KONTEXT: ModelSettings(steps=1, kind="edit")}, **overrides)
        return LiveServer(settings)

    return start


@pytest.fixture
def live(start_server) -> LiveServer:
    with start_server() as server:
        yield server


def client_of(live: LiveServer, project: str | None = None, mode: KeyMode = KeyMode.SIGNATURE) -> ProtocolClient:
    return ProtocolClient(live.base_url, live.service.keys.create(mode, project=project),
                          signed=mode is KeyMode.SIGNATURE)


def test_a_project_lists_and_deletes_its_uploads_and_no_other_project_can(live):
    client, other = client_of(live), client_of(live)
    first, second = picture("orange"), picture("teal")
    older = upload(client, first, "C:\\Users\\me\\holiday.png")
    newer = upload(client, second, "../../etc/\u202egnp.exe\x07 \t  night .png")
    assert (older["name"], newer["name"]) == ("holiday.png", "gnp.exe night .png")  # shown, never a path
    assert older["size"] == str(len(first)) and older["contenttype"] == "image/png"

    listed = client.call("File/List", {})
    assert listed["result"] is True and listed["total"] == "2"
    assert [entry["id"] for entry in listed["list"]] == [newer["id"], older["id"]]  # newest first
    assert listed["list"][1] == older
    oldest_first = client.call("File/List", {"order": "asc", "start": "1", "limit": "1"})
    assert [entry["id"] for entry in oldest_first["list"]] == [newer["id"]]

    assert other.call("File/List", {}) == {"result": True, "errors": [], "total": "0", "list": []}
    assert other.call("File/Delete", {"fileid": older["id"]}) == {"result": False, "errors": NO_FILE}
    assert httpx.get(older["url"], timeout=10).content == first

    colleague = client_of(live, project=client.key.project, mode=KeyMode.KEY_ONLY)  # same project, other key
    assert colleague.call("File/Delete", {"fileid": older["id"]}) == {"result": True, "errors": []}
    assert httpx.get(older["url"], timeout=10).status_code == 404
    assert [entry["id"] for entry in client.call("File/List", {})["list"]] == [newer["id"]]
    assert client.call("File/Delete", {"fileid": older["id"]}) == {"result": False, "errors": NO_FILE}
    assert client.call("File/Delete", {})["errors"] == [{"code": 0, "message": "Request parameter [fileid] required"}]
    assert client.call("File/List", {"order": "up"})["errors"][0]["message"].startswith(
        "Request parameter [order] must be one of")
    assert len(stored_files(live)) == 1


@pytest.mark.parametrize(("sent", "shown"), [
    ("photo.png", "photo.png"),
    ("/home/me/../photo.png", "photo.png"),
    ("C:\\Users\\me\\photo.png", "photo.png"),
    ("a\r\nb\u200b\u0000.png", "a b.png"),
    ("", "upload.webp"),
    ("..", "upload.webp"),
    ("dir/", "upload.webp"),
    ("\u202e\u2066", "upload.webp"),
    ("é" * 300 + ".png", "é" * 200),
    ("e\u0301.png", "\u00e9.png"),
])
def test_the_name_sent_is_shown_never_used(sent, shown):
    from fluxhost.operations import shown_name

    assert shown_name(sent, "webp") == shown


def test_a_run_takes_an_upload_until_it_is_deleted(live):
    client = client_of(live)
    entry = upload(client, picture())
    run = client.call(f"Run/{KONTEXT}", {"prompt": "make it blue", "inputImageUrl": entry["url"]})
    assert run["result"] is True, run
    assert client.call("File/Delete", {"fileid": entry["id"]})["result"] is True

    [kept] = client.detail(run["taskid"])["inputs"]  # the queued task holds its own copy
    assert httpx.get(kept["url"], timeout=10).content == picture()
    refused = client.call(f"Run/{KONTEXT}", {"prompt": "make it blue", "inputImageUrl": entry["url"]})
    assert refused == {"result": False, "errors": [
        {"code": 0, "message": "Request parameter [inputImageUrl] names a file this server no longer has"}]}


def test_the_sdks_list_and_delete_uploads(live):
    key = live.service.keys.create(KeyMode.SIGNATURE)
    with Client(live.base_url, key.api_key, key.api_secret) as sdk:
        url = sdk.upload(picture())
        [entry] = sdk.uploads()
        assert entry["url"] == url
        sdk.delete_upload(entry["id"])
        assert sdk.uploads() == []
        with pytest.raises(ProtocolError, match="There is no such file"):
            sdk.delete_upload(entry["id"])

    async def asynchronously() -> list[dict[str, str]]:
        async with AsyncClient(live.base_url, key.api_key, key.api_secret) as sdk:
            await sdk.upload(picture())
            [entry] = await sdk.uploads()
            await sdk.delete_upload(entry["id"])
            return await sdk.uploads()

    assert asyncio.run(asynchronously()) == []


def test_the_quota_refuses_what_would_pass_it_until_room_is_made(start_server):
    data = picture()
    with start_server(upload_quota_bytes=2 * len(data) + len(data) // 2) as live:
        client = client_of(live)
        first, _second = upload(client, data), upload(client, data)
        headers = client.headers()
        refused = send_upload(client, data, headers=headers)
        assert refused.status_code == 200
        assert refused.json() == {"result": False, "errors": [{"code": 0, "message": (
            f"Request parameter [file] would take this project's uploads past their quota of "
            f"{2 * len(data) + len(data) // 2} bytes ({2 * len(data)} in use, this file {len(data)}): delete some "
            "with File/Delete first.")}]}
        assert client.call("File/List", {})["total"] == "2" and len(stored_files(live)) == 2
        assert upload(client_of(live), data)["size"] == str(len(data))  # another project has its own quota

        assert client.call("File/Delete", {"fileid": first["id"]})["result"] is True
        again = send_upload(client, data, headers=headers)  # the very same request: its nonce was not spent
        assert again.status_code == 200 and again.json()["result"] is True, again.text


def test_uploads_sent_together_stay_within_the_quota(start_server):
    data = picture()
    with start_server(upload_quota_bytes=3 * len(data), api_threads=4) as live:
        client = client_of(live, mode=KeyMode.KEY_ONLY)
        answers: list[dict] = []
        senders = [threading.Thread(target=lambda: answers.append(send_upload(client, data).json()))
                   for _ in range(8)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(30)
        assert sorted(answer["result"] for answer in answers) == [False] * 5 + [True] * 3
        assert client.call("File/List", {})["total"] == "3" and len(stored_files(live)) == 3


def test_a_rewrite_that_fails_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    """A file written again (a training's manifest at each checkpoint) is the old one or the new one,
    never part of the new: a worker killed mid-write must leave a manifest its retry can read."""
    files = LocalFileStore(tmp_path, "http://127.0.0.1:1/files")
    folder = files.new_folder()
    files.save(folder, "checkpoints.json", b'{"step": 3}')
    write_bytes = Path.write_bytes

    def half_then_fail(path: Path, data: bytes) -> int:
        write_bytes(path, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(Path, "write_bytes", half_then_fail)
    with pytest.raises(OSError):
        files.save(folder, "checkpoints.json", b'{"step": 6}')
    assert files.read(folder, "checkpoints.json") == b'{"step": 3}'
    assert [path.name for path in tmp_path.rglob("*") if path.is_file()] == ["checkpoints.json"]


@pytest.mark.parametrize(("failure", "message"), [
    (errno.ENOSPC, NO_ROOM),
    (errno.EACCES, "The server could not store the file right now: retry later."),
])
def test_a_failed_write_is_refused_clearly_and_leaves_nothing(live, monkeypatch, failure, message):
    client = client_of(live)
    files_dir = live.settings.files_dir.resolve()
    write_bytes = Path.write_bytes

    def half_then_fail(path: Path, data: bytes) -> int:
        if files_dir not in path.resolve().parents:
            return write_bytes(path, data)
        write_bytes(path, data[: len(data) // 2])
        raise OSError(failure, os.strerror(failure), str(path))

    monkeypatch.setattr(Path, "write_bytes", half_then_fail)
    headers = client.headers()
    refused = send_upload(client, picture(), headers=headers)
    assert refused.status_code == 503, refused.text
    assert refused.json() == {"result": False, "errors": [{"code": 0, "message": message}]}
    assert stored_files(live) == [] and client.call("File/List", {})["total"] == "0"

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    again = send_upload(client, picture(), headers=headers)  # room again: the same request goes through
    assert again.status_code == 200 and again.json()["result"] is True, again.text
    assert len(stored_files(live)) == 1


def database_locked(*_args, **_kwargs) -> None:
    """A write that waited out the database's timeout (another process held the lock)."""
    raise OperationalError("INSERT INTO tasks", {}, sqlite3.OperationalError("database is locked"))


def test_a_run_whose_task_cannot_be_stored_leaves_none_of_its_input_images(live, monkeypatch):
    client = client_of(live)
    monkeypatch.setattr(live.service.tasks, "create", database_locked)
    refused = httpx.post(f"{client.base_url}/v1/Run/{KONTEXT}", data={"prompt": "make it blue"},
                         files={"inputImage": ("photo.png", picture(), "image/png")}, headers=client.headers(),
                         timeout=30)
    assert refused.status_code == 503, refused.text
    assert stored_files(live) == []  # kept before the task, removed once it could not be stored


def test_the_janitor_deletes_expired_uploads(start_server):
    with start_server(upload_expiry_seconds=3600) as live:
        client = client_of(live)
        expired, fresh = upload(client, picture("orange")), upload(client, picture("teal"))
        with live.service.db.write() as connection:
            connection.execute(text("UPDATE uploads SET created_at = created_at - 3601 WHERE id = :id"),
                               {"id": expired["id"]})
        for chore in live.service.janitor.chores:
            chore()
        assert [entry["id"] for entry in client.call("File/List", {})["list"]] == [fresh["id"]]
        assert httpx.get(expired["url"], timeout=10).status_code == 404
        assert httpx.get(fresh["url"], timeout=10).content == picture("teal")
        many = send_file(client, archive({f"{number}.txt": b"a caption" for number in range(600)}), "set.zip")
        assert many["result"] is True
        with live.service.db.write() as connection:
            connection.execute(text("UPDATE uploads SET created_at = created_at - 3601"))
        for chore in live.service.janitor.chores:  # one pass takes them all (it took 500 a pass: 30 s each)
            chore()
        assert client.call("File/List", {})["total"] == "0"


def test_uploads_never_expire_by_default(live):
    client = client_of(live)
    entry = upload(client, picture())
    with live.service.db.write() as connection:
        connection.execute(text("UPDATE uploads SET created_at = 0"))
    for chore in live.service.janitor.chores:
        chore()
    assert client.call("File/List", {})["total"] == "1"
    assert httpx.get(entry["url"], timeout=10).content == picture()


def test_reservations_made_at_once_take_turns_on_the_quota(tmp_path, database_url):
    """Store-level, many threads at once: on PostgreSQL only the project's row lock keeps two
    transactions from both counting the bytes before either adds its own."""
    from fluxhost.store.uploads import NewUpload, UploadStore

    db = Database(database_url or f"sqlite:///{tmp_path / 'db.sqlite'}")
    db.migrate()
    keys = KeyStore(db)
    key = keys.find_active(keys.create(KeyMode.KEY_ONLY).api_key)
    store, start = UploadStore(db), threading.Barrier(12)
    reserved: list[bool] = []

    def reserve() -> None:
        start.wait(10)
        wanted = NewUpload(key.project_id, key.id, "a.png", secrets.token_hex(32), "upload.png", "image/png", 100)
        reserved.append(store.reserve(wanted, quota_bytes=300, now=0.0) is not None)

    threads = [threading.Thread(target=reserve) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    db.dispose()
    assert sorted(reserved) == [False] * 9 + [True] * 3


# --- folders, and ZIP archives unpacked into them (a training set in one request) ---------------

def archive(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as packed:
        for name, data in files.items():
            packed.writestr(name, data)
    return buffer.getvalue()


def send_file(client: ProtocolClient, data: bytes, filename: str, **fields: str) -> dict:
    answer = httpx.post(f"{client.base_url}/v1/File/Upload", data=fields, files={"file": (filename, data)},
                        headers=client.headers(), timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_zip_of_pictures_and_captions_becomes_a_folders_files(live):
    client = client_of(live)
    [folder] = client.call("File/FolderCreate", {"name": "rings_2026"})["list"]
    [inner] = client.call("File/FolderCreate", {"name": "held-out", "parentid": folder["id"]})["list"]
    assert (folder["name"], folder["parentid"], inner["parentid"]) == ("rings_2026", "", folder["id"])

    training = {"rings/01.png": picture("red"), "rings/01.txt": b"a red ring, ringz",
                "rings/02.png": picture("blue"), "rings/02.txt": b"a blue ring on grass, ringz",
                "__MACOSX/rings/._01.png": b"\x00\x05", "rings/.DS_Store": b"\x00", "rings/notes.md": b"# notes"}
    answer = send_file(client, archive(training), "rings.zip", folderid=folder["id"])
    assert answer["result"] is True, answer
    kept = {entry["name"]: entry for entry in answer["list"]}
    assert sorted(kept) == ["01.png", "01.txt", "02.png", "02.txt"]  # the folders inside dropped, junk skipped
    assert {entry["parentid"] for entry in kept.values()} == {folder["id"]}
    assert kept["01.txt"]["contenttype"] == "text/plain" and kept["02.png"]["contenttype"] == "image/png"
    assert httpx.get(kept["02.txt"]["url"], timeout=10).text == "a blue ring on grass, ringz"

    caption = send_file(client, b"a white ring", "03.txt", folderid=inner["id"])["list"][0]
    assert caption["parentid"] == inner["id"]
    listed = client.call("File/List", {"folderid": folder["id"]})
    assert listed["total"] == "4" and {entry["name"] for entry in listed["list"]} == set(kept)
    assert client.call("File/List", {})["total"] == "5"


def test_a_refused_archive_keeps_nothing(start_server):
    with start_server(archive_max_bytes=1_000_000) as live:
        client = client_of(live)
        [folder] = client.call("File/FolderCreate", {"name": "set"})["list"]
        broken = archive({"01.png": picture(), "02.png": b"\x89PNG not really"})
        bomb = archive({"01.png": picture(), "zeros.txt": b"0" * 2_000_000})
        answers = [send_file(client, data, "set.zip", folderid=folder["id"]) for data in (broken, bomb)]
        empty = send_file(client, archive({"readme.md": b"nothing here"}), "empty.zip")
        assert client.call("File/List", {})["total"] == "0" and stored_files(live) == []
    assert answers[0]["errors"][0]["message"].startswith("Request parameter [file] ") and "(02.png)" in answers[0][
        "errors"][0]["message"]
    assert answers[1]["errors"][0]["message"] == "Request parameter [file] unpacks to more than 1 MB"
    assert empty["errors"][0]["message"] == "Request parameter [file] holds no picture or caption"


@pytest.mark.parametrize(("body", "message"), [
    ({"name": "my rings!"}, "Request parameter [name] must be 1 to 100 letters, digits, hyphens or underscores"),
    ({"name": ""}, "Request parameter [name] must be 1 to 100 letters, digits, hyphens or underscores"),
    ({"name": "ok", "parentid": "0" * 32}, "Request parameter [parentid] names no folder of your project"),
])
def test_folder_names_and_parents_are_checked(live, body, message):
    answer = client_of(live).call("File/FolderCreate", body)
    assert answer["result"] is False and answer["errors"][0]["message"] == message


def test_no_project_reaches_another_projects_folder(live):
    owner, other = client_of(live), client_of(live)
    [folder] = owner.call("File/FolderCreate", {"name": "private"})["list"]
    refused = send_file(other, picture(), "a.png", folderid=folder["id"])
    assert refused["errors"][0]["message"].startswith("Request parameter [folderid] names no folder of your project")
    assert other.call("File/List", {"folderid": folder["id"]})["result"] is False
    assert other.call("File/FolderCreate", {"name": "x", "parentid": folder["id"]})["result"] is False
    assert owner.call("File/List", {"folderid": folder["id"]})["total"] == "0"


@pytest.mark.parametrize(("path", "fields", "file_field"), [
    ("File/Upload", {}, "file"),
    (f"Run/{KONTEXT}", {"prompt": "make it blue"}, "inputImage"),
], ids=["an upload", "a Run's input image"])
def test_files_are_kept_off_the_database_threads(start_server, path, fields, file_field):
    """Keeping a file waits on the disk or object store: on the shared threads, while the
    database's (here only one) serves the other requests."""
    from tests.test_editing import post_files

    with start_server(api_threads=1) as live:
        client = client_of(live)
        answer = sent_while_waiting(held(live.service.operations.files, "save"), lambda: post_files(
            client, path, fields, {file_field: ("a.png", picture(), "image/png")}), client)
        assert answer["result"] is True


def _two_member_archive() -> bytes:
    return archive({"a.txt": b"a caption " * 500, "b.png": bytes(range(256)) * 50})


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=4))
def test_a_damaged_archive_is_refused_in_words_whatever_the_damage(damage):
    data = bytearray(_two_member_archive())
    for position, value in damage:
        data[position % len(data)] = value
    try:
        list(archive_members(bytes(data), 100, 1_000_000))
    except ArchiveRefused:
        pass  # a refusal in the protocol's words: anything else would be a 500


def test_a_deflate_stream_that_does_not_decode_and_a_nameless_member_are_refused():
    data = bytearray(archive({"a.txt": b"hello world " * 500}))
    start = 30 + len("a.txt")  # the member's compressed bytes, after its local header
    data[start : start + 6] = bytes(byte ^ 0xFF for byte in data[start : start + 6])
    with pytest.raises(ArchiveRefused, match="has a member that cannot be read"):
        list(archive_members(bytes(data), 100, 1_000_000))
    nameless = io.BytesIO()
    with zipfile.ZipFile(nameless, "w") as written:
        written.writestr(zipfile.ZipInfo(""), b"content")
    with pytest.raises(ArchiveRefused, match="has a member without a name"):
        list(archive_members(nameless.getvalue(), 100, 1_000_000))


def test_a_damaged_lzma_member_is_refused_in_words():
    """Its LZMAError was none of those caught: a 500 with a stack trace."""
    written = io.BytesIO()
    with zipfile.ZipFile(written, "w", compression=zipfile.ZIP_LZMA) as zipped:
        zipped.writestr("a.txt", b"hello world " * 500)
    data = bytearray(written.getvalue())
    start = 30 + len("a.txt") + 8  # into the member's LZMA stream, past its header
    data[start : start + 6] = bytes(byte ^ 0xFF for byte in data[start : start + 6])
    with pytest.raises(ArchiveRefused, match=r"has a member that cannot be read \(a.txt: Corrupt input data\)"):
        list(archive_members(bytes(data), 100, 1_000_000))


def test_an_archive_of_too_many_entries_is_refused_before_zipfile_reads_its_directory(monkeypatch):
    """zipfile keeps a record per entry of the whole directory before any can be counted: a 50 MB
    archive of a million empty entries took 386 MB and 10 s to be refused."""
    many = archive({f"{number}.txt": b"" for number in range(2000)})
    monkeypatch.setattr(archives.zipfile, "ZipFile", lambda *_args: pytest.fail("the directory was read"))
    with pytest.raises(ArchiveRefused, match="holds more than 10 files"):
        list(archive_members(many, 10, 1_000_000))


def test_an_archive_of_few_members_is_taken_however_large_they_are():
    """The directory's offset (the members' bytes before it) was read as its size: every archive
    of more than 20 MB was refused as holding more than 10,000 files."""
    large = archive({"photo.png": random.Random(0).randbytes(21_000_000), "photo.txt": b"a caption"})  # 21 MB
    assert [name for name, _ in archive_members(large, 10, 100_000_000)] == ["photo.png", "photo.txt"]


def test_a_safetensors_header_nested_past_the_json_parsers_depth_is_not_taken_for_one():
    header = b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert not is_safetensors(len(header).to_bytes(8, "little") + header + bytes(16))


def test_an_upload_from_no_known_key_is_refused_before_its_body_is_read(live):
    """Hundreds of MB taken in from anyone would be the server's memory: the key comes first."""
    address = httpx.URL(live.base_url)
    announced = live.service.settings.lora_max_bytes  # within what File/Upload takes
    head = (f"POST /v1/File/Upload HTTP/1.1\r\nHost: {address.host}:{address.port}\r\n"
            f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {announced}\r\n"
            "x-api-key: nobody\r\nx-nonce: 1\r\nx-signature: 00\r\n\r\n--x\r\n").encode()
    with socket.create_connection((address.host, address.port), timeout=10) as connection:
        connection.sendall(head)  # and nothing more of the body it announced
        answer = connection.recv(65536)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert answer.endswith(b'{"result":false,"errors":[{"code":0,"message":"Project authorization is not founded."}]}')
