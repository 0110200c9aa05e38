"""Bad requests: each gets the protocol's error shape and a clear message; nothing is stored."""

import httpx
import pytest

from tests.helpers import SLUG


def stored_tasks(client) -> int:
    return int(client.call("Task/List", {})["total"])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"aspectRatio": "16:9"}, "Request parameter [prompt] required"),
        ({"prompt": "x", "aspectRatio": "7:3"}, "Request parameter [aspectRatio] must be one of"),
        ({"prompt": "x", "seed": "abc"}, "Request parameter [seed] must be integer or float"),
        ({"prompt": "x", "safetyTolerance": "9"}, "Request parameter [safetyTolerance] must be between 0 and 6"),
        ({"prompt": "x", "outputFormat": "gif"}, "Request parameter [outputFormat] must be one of jpeg, png"),
        ({"prompt": "x", "callbackUrl": "You can provide a callback URL; Wiro will send a POST request to it."},
         "Request parameter [callbackUrl] must be an http or https URL"),
        ({"prompt": "x", "callbackUrl": "ftp://example.com/x"}, "Request parameter [callbackUrl] must be an http"),
    ],
)
def test_bad_inputs_are_refused_and_nothing_is_stored(client, body, message):
    response = client.post(f"Run/{SLUG}", body)
    assert response.status_code == 200
    answer = response.json()
    assert answer["result"] is False
    [error] = answer["errors"]
    assert error["code"] == 0 and error["message"].startswith(message)
    assert stored_tasks(client) == 0


def test_unknown_model(client):
    answer = client.post("Run/black-forest-labs/flux-pro-9", {"prompt": "x"}).json()
    assert answer == {"result": False, "errors": [{"code": 1, "message": "slug-owner-project-not-exist"}]}
    assert stored_tasks(client) == 0


@pytest.mark.parametrize("body", [b"{not json", b'{"prompt": "x"', b"\xff\xfe{", b"[1, 2]", b"{ a b c"])
def test_unparseable_bodies(client, server, body):
    response = httpx.post(f"{server.base_url}/v1/Run/{SLUG}", content=body, headers=client.headers(), timeout=10)
    assert response.status_code == 200
    assert response.json() == {"result": False, "errors": [{"code": 0, "message": "Request parameters are invalid."}]}
    assert stored_tasks(client) == 0


def test_unknown_paths_and_methods_answer_json(server, client):
    response = httpx.post(f"{server.base_url}/v1/Task/Nothing", headers=client.headers(), timeout=10)
    assert response.status_code == 404
    assert response.json() == {"result": False, "errors": [{"code": 0, "message": "Error parsing url."}]}
    response = httpx.get(f"{server.base_url}/v1/Task/Detail", timeout=10)
    assert response.status_code == 405 and response.json()["result"] is False
    response = httpx.get(f"{server.base_url}/files/{'0' * 64}/0.png", timeout=10)
    assert response.status_code == 404 and response.json()["result"] is False


def test_a_trailing_slash_is_an_unknown_path_in_each_doors_shape(server, client):
    run = client.post(f"Run/{SLUG}/", {"prompt": "a fox"})
    assert run.status_code == 404
    assert run.json() == {"result": False, "errors": [
        {"code": 0, "message": f"Error parsing url. No path ends with a slash: did you mean /v1/Run/{SLUG}?"}]}
    health = httpx.get(f"{server.base_url}/healthz/", timeout=10)
    assert health.status_code == 404
    assert health.json()["errors"][0]["message"].endswith("did you mean /healthz?")
    bfl = httpx.post(f"{server.base_url}/bfl/v1/flux-pro-1.1/", json={"prompt": "x"}, timeout=10)
    assert (bfl.status_code, bfl.json()) == (404, {"detail": "Not Found"})
    openai = httpx.post(f"{server.base_url}/openai/v1/images/generations/", json={"prompt": "x"}, timeout=10)
    assert (openai.status_code, openai.json()["error"]["code"]) == (404, "not_found")
    assert stored_tasks(client) == 0


def test_task_lookups(client):
    required = [{"code": 0, "message": "taskid or socketaccesstoken is required"}]
    assert client.call("Task/Detail", {})["errors"] == required
    for body in ({"taskid": "999"}, {"taskid": "abc"}, {"tasktoken": "nope"}):
        assert client.call("Task/Detail", body)["errors"] == [{"code": 1, "message": "There is no task yet."}]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("Task/List", {"limit": "0"}),
        ("Task/List", {"start": "x"}),
        ("Task/List", {"order": "sideways"}),
        ("Tool/List", {"limit": "-3"}),
        ("Tool/Detail", {"slugowner": "nobody", "slugproject": "nothing"}),
        ("Task/Cancel", {}),
        ("Task/Kill", {"taskid": "12"}),
        ("Task/InputOutputDelete", {"tasktoken": "zzz"}),
    ],
)
def test_odd_requests_never_500(client, path, body):
    response = client.post(path, body)
    assert response.status_code == 200
    answer = response.json()
    assert answer["result"] is False and answer["errors"][0]["message"]


def test_a_list_parameter_nested_past_the_json_parsers_depth_is_read_as_text(client):
    response = client.post("Tool/List", {"categories": "[" * 5000 + "]" * 5000})
    assert response.status_code == 200 and response.json()["result"] is True  # a category no tool has


def test_form_bodies_are_read_like_json(client, server):
    headers = client.headers()
    multipart = httpx.post(f"{server.base_url}/v1/Run/{SLUG}", headers=headers, timeout=10,
                           files={"prompt": (None, "a fox"), "seed": (None, "5"), "aspectRatio": (None, "1:1")})
    assert multipart.json()["result"] is True, multipart.text
    urlencoded = httpx.post(f"{server.base_url}/v1/Run/{SLUG}", headers=client.headers(), timeout=10,
                            data={"prompt": "a fox", "seed": "6", "outputFormat": "jpeg"})
    assert urlencoded.json()["result"] is True, urlencoded.text
    first = client.detail(multipart.json()["taskid"])["parameters"]
    second = client.detail(urlencoded.json()["taskid"])["parameters"]
    assert first == {"prompt": "a fox", "seed": "5", "aspectRatio": "1:1"}
    assert second == {"prompt": "a fox", "seed": "6", "outputFormat": "jpeg"}
    for taskid in (multipart.json()["taskid"], urlencoded.json()["taskid"]):
        client.wait(taskid)
