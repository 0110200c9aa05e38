"""Projects are walled off from each other; files can be deleted; the catalog describes the tool."""

import mimetypes

import httpx

from fluxhost.signing import KeyMode
from fluxhost.storage.base import content_type
from tests.helpers import SLUG, ProtocolClient

NO_TASK = [{"code": 1, "message": "There is no task yet."}]


def test_another_project_cannot_see_or_touch_a_task(server, client):
    run = client.run()
    other = ProtocolClient(server.base_url, server.service.keys.create(KeyMode.SIGNATURE))
    for path, missing in [("Task/Detail", NO_TASK), ("Task/Cancel", NO_TASK), ("Task/Kill", NO_TASK),
                          ("Task/InputOutputDelete", [{"code": 1, "message": "task-not-exist"}])]:
        assert other.call(path, {"taskid": run["taskid"]})["errors"] == missing, path
        assert other.call(path, {"tasktoken": run["socketaccesstoken"]})["errors"] == missing, path
    assert other.call("Task/List", {}) == {"total": "0", "errors": [], "tasklist": [], "result": True}
    task = client.wait(run["taskid"])
    assert task["status"] == "task_postprocess_end" and task["outputs"]


def test_keys_of_one_project_share_its_tasks(server, client):
    run = client.run()
    same = server.service.keys.create(KeyMode.KEY_ONLY, project=client.key.project)
    colleague = ProtocolClient(server.base_url, same, signed=False)
    assert colleague.detail(run["taskid"])["socketaccesstoken"] == run["socketaccesstoken"]


def test_list_is_newest_first_and_pages(client):
    ids = [client.run()["taskid"] for _ in range(3)]
    listed = client.call("Task/List", {})
    assert listed["total"] == "3" and [t["id"] for t in listed["tasklist"]] == ids[::-1]
    oldest_first = client.call("Task/List", {"order": "asc", "start": "1", "limit": "1"})
    assert oldest_first["total"] == "3" and [t["id"] for t in oldest_first["tasklist"]] == [ids[1]]
    for taskid in ids:
        client.wait(taskid)


def test_list_searches_the_prompts_of_the_project_only(server, client):
    fox, owl, percent, summer = (client.run(prompt=prompt)["taskid"] for prompt in (
        "A Red Fox in the snow", "an owl at night", "100% cotton, 5_0", "ÉTÉ à PARIS, Ölgemälde"))
    other = ProtocolClient(server.base_url, server.service.keys.create(KeyMode.SIGNATURE))
    other.run(prompt="another fox")

    def found(search: str, **more: str) -> tuple[str, list[str]]:
        listed = client.call("Task/List", {"search": search, **more})
        return listed["total"], [task["id"] for task in listed["tasklist"]]

    assert found("red FOX") == ("1", [fox])
    assert found("  fox ") == ("1", [fox])
    assert found("n") == ("3", [percent, owl, fox])
    assert found("n", start="1", limit="1") == ("3", [owl])
    assert found("%") == ("1", [percent]) and found("5_0") == ("1", [percent]) and found("5%0") == ("0", [])
    assert found("été") == found("ÉTÉ") == found("ölGEMÄLDE") == ("1", [summer])  # beyond ASCII too
    assert found("") == found(None) == found("  ") == ("4", [summer, percent, owl, fox])  # no search
    assert found("a heron") == ("0", [])
    assert found("", order=None) == found("", order="") == found("", order="desc")  # null or blank: the default
    for taskid in (fox, owl, percent, summer):
        client.wait(taskid)


def test_input_output_delete_removes_the_files_and_keeps_the_record(client):
    run = client.run()
    url = client.wait(run["taskid"])["outputs"][0]["url"]
    assert httpx.get(url, timeout=10).status_code == 200
    for _ in range(2):  # idempotent
        assert client.call("Task/InputOutputDelete", {"tasktoken": run["socketaccesstoken"]}) == {
            "result": True, "errors": []}
    task = client.detail(run["taskid"])
    assert task["status"] == "task_postprocess_end" and task["outputs"] == [] and task["size"] == "0"
    assert httpx.get(url, timeout=10).status_code == 404


def test_input_output_delete_waits_for_the_end(client):
    blocker = client.run()  # keeps the single worker busy: the task below has not ended
    run = client.run()
    answer = client.call("Task/InputOutputDelete", {"tasktoken": run["socketaccesstoken"]})
    assert answer["result"] is False and answer["errors"][0]["code"] == 1
    assert answer["errors"][0]["message"] == "Task must be completed or cancelled before deleting files"
    for taskid in (blocker["taskid"], run["taskid"]):
        assert client.wait(taskid)["outputs"]


def test_tool_list_and_detail(client):
    listed = client.call("Tool/List", {"search": "flux", "categories": '["text-to-image"]'})
    assert listed["total"] == 1 and listed["tool"][0]["slugproject"] == "flux-pro-1.1"
    assert client.call("Tool/List", {"search": "nothing-like-it"})["total"] == 0
    for project in ("flux-pro-1.1", "flux-pro-1-1"):
        [tool] = client.call("Tool/Detail", {"slugowner": "black-forest-labs", "slugproject": project})["tool"]
        items = {item["id"]: item for group in tool["parameters"] for item in group["items"]}
        assert list(items) == ["prompt", "promptUpsampling", "safetyTolerance", "aspectRatio", "seed", "outputFormat"]
        sizes = {o["value"]: (o["width"], o["height"]) for o in items["aspectRatio"]["options"]}
        assert sizes["16:9"] == ("1376", "768") and sizes["1:1"] == ("1024", "1024")
        assert items["seed"]["default"] == "42" and items["outputFormat"]["default"] == "png"


def test_the_dashed_slug_runs_the_same_model(client):
    answer = client.call("Run/black-forest-labs/flux-pro-1-1", {"prompt": "x"})
    assert answer["result"] is True
    task = client.wait(answer["taskid"])
    assert f"{task['modelslugowner']}/{task['modelslugproject']}" == SLUG


def test_a_stored_file_is_served_from_the_disk_with_its_size_a_range_and_its_type(server, client):
    """It was read whole into memory for every GET and HEAD (a 512 MB adapter per open download),
    and a Range was answered with the whole file: a download could not resume."""
    url = client.wait(client.run()["taskid"])["outputs"][0]["url"]
    whole = httpx.get(url, timeout=10)
    assert whole.status_code == 200 and whole.headers["content-type"] == "image/png"
    assert whole.headers["x-content-type-options"] == "nosniff" and whole.headers["accept-ranges"] == "bytes"
    head = httpx.head(url, timeout=10)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(whole.content))
    part = httpx.get(url, headers={"range": "bytes=0-9"}, timeout=10)
    assert part.status_code == 206 and part.content == whole.content[:10]
    assert part.headers["content-range"] == f"bytes 0-9/{len(whole.content)}"
    assert httpx.get(url.rsplit("/", 1)[0] + "/missing.png", timeout=10).status_code == 404


def test_a_file_s_type_does_not_depend_on_the_host_s_table_of_types(monkeypatch):
    """Python's own table has no WebP: on a host without /etc/mime.types, pictures were served as
    application/octet-stream and downloaded instead of shown."""
    monkeypatch.setattr(mimetypes, "guess_type", lambda *_args, **_kwargs: (None, None))
    assert [content_type(name) for name in ("a.webp", "b.PNG", "c.jpg", "d.txt", "e.safetensors")] == [
        "image/webp", "image/png", "image/jpeg", "text/plain", "application/octet-stream"]
