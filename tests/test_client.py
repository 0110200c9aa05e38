"""The SDK and the client commands, against the real app."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from fluxhost.client import (
    AsyncClient,
    AuthenticationError,
    Client,
    NonceSource,
    ProtocolError,
    RunResult,
    ServerUnavailable,
    TaskInfo,
)
from fluxhost.signing import KeyMode
from tests.helpers import SLUG, LiveServer, free_port
from tests.test_seed_flow import SEED_DETAIL_EXAMPLE

FLUXHOST = str(Path(sys.executable).with_name("fluxhost"))


@pytest.fixture
def sdk(server):
    key = server.service.keys.create(KeyMode.SIGNATURE)
    with Client(server.base_url, key.api_key, key.api_secret) as client:
        yield client


@pytest.mark.parametrize("via", ["socket", "poll"])
def test_run_wait_download(sdk, tmp_path, via):
    progress = []
    task = sdk.run(SLUG, prompt="a red fox", aspectRatio="3:2", seed=7)
    info = task.wait(timeout=120, via=via, on_progress=progress.append)
    assert info.succeeded and info.seed == "7" and info.outputs[0].size > 0
    if via == "socket":
        assert [p.step for p in progress] == [1, 2, 3, 4] and progress[-1].percentage == 100
    [path] = task.download(tmp_path)
    assert Image.open(path).size == (1248, 832)
    [again] = task.download(tmp_path)  # the same name: saved beside, never over, the first
    assert again == path.with_stem(f"{path.stem}-2") and again.read_bytes() == path.read_bytes()
    assert sorted(tmp_path.glob("*.png*")) == sorted([path, again])  # nothing partial left


def test_cancel_and_kill(make_settings):
    with LiveServer(make_settings(steps=60, max_batch=1)) as live:  # the second task stays queued, to be cancelled
        key = live.service.keys.create(KeyMode.SIGNATURE)
        with Client(live.base_url, key.api_key, key.api_secret) as client:
            running, queued = client.run(SLUG, prompt="a"), client.run(SLUG, prompt="b")
            assert queued.cancel().cancelled
            while running.detail().status != "task_start":
                time.sleep(0.05)
            assert running.kill().cancelled
            assert running.wait(timeout=30).cancelled and queued.wait(timeout=30, via="poll").cancelled


def test_protocol_errors_are_exceptions(sdk, server):
    with pytest.raises(ProtocolError) as error:
        sdk.run(SLUG, prompt="x", aspectRatio="7:3")
    assert error.value.code == 0 and error.value.message.startswith("Request parameter [aspectRatio]")
    with pytest.raises(ProtocolError) as error:
        sdk.detail(999)
    assert (error.value.code, error.value.message) == (1, "There is no task yet.")
    with pytest.raises(AuthenticationError) as error:
        Client(server.base_url, "wrong-key", "x").list_tasks()
    assert error.value.status_code == 401 and error.value.message == "Project authorization is not founded."
    with pytest.raises(ServerUnavailable):
        Client(f"http://127.0.0.1:{free_port()}", "k", retries=0).list_tasks()


def test_the_seed_examples_parse_exactly():
    info = TaskInfo.model_validate(SEED_DETAIL_EXAMPLE["tasklist"][0])
    assert (info.id, info.status, info.elapsedseconds, info.createtime) == (2221, "task_postprocess_end", 6.0,
                                                                             1734513807)
    assert info.socketaccesstoken == "eDcCm5yyUfIvMFspTwww49OUfgXkQt" and info.canceltime == 0
    [output] = info.outputs
    assert (output.name, output.size, output.contenttype) == ("0.png", 202472, "image/png")
    seed_run = {"errors": [], "taskid": "2221", "socketaccesstoken": "eDcCm5yyUfIvMFspTwww49OUfgXkQt", "result": True}
    run = RunResult.model_validate(seed_run)
    assert (run.taskid, run.socketaccesstoken) == (2221, "eDcCm5yyUfIvMFspTwww49OUfgXkQt")


def test_nonces_are_unique_within_a_millisecond():
    nonces = NonceSource()
    drawn = [int(nonces.next()) for _ in range(5000)]
    assert drawn == sorted(set(drawn)) and len(str(drawn[0])) == 13


def test_key_only_and_async_client(server, tmp_path):
    key = server.service.keys.create(KeyMode.KEY_ONLY)

    async def scenario():
        async with AsyncClient(server.base_url, key.api_key) as client:
            task = await client.run(SLUG, prompt="a boat", aspectRatio="1:1")
            info = await task.wait(timeout=120)
            listed = await client.list_tasks()
            tools = await client.tools()
            saved = await task.download(tmp_path)
            await client.delete_files(task.id)
            return info, saved, listed, tools, await task.detail()

    info, [path], listed, tools, deleted = asyncio.run(scenario())
    assert info.succeeded and Image.open(path).size == (1024, 1024)
    assert [t.id for t in listed] == [info.id] and tools[0]["slugproject"] == "flux-pro-1.1"
    assert info.outputs and deleted.outputs == []  # the async client deletes files as the sync one does


@pytest.fixture
def cli_env(server, tmp_path):
    key = server.service.keys.create(KeyMode.SIGNATURE)
    return {**os.environ, "FLUXHOST_API_KEY": key.api_key, "FLUXHOST_API_SECRET": key.api_secret,
            "FLUXHOST_SERVER": server.base_url, "XDG_CONFIG_HOME": str(tmp_path / "config")}


def test_the_run_command_saves_the_image(cli_env, tmp_path):
    target = tmp_path / "a-fox-with-a-name-that-makes-the-printed-line-longer-than-a-terminal-is-wide.png"
    done = subprocess.run([FLUXHOST, "run", "a fox", "--aspect-ratio", "9:16", "--seed", "42", "-o", str(target)],
                          env=cli_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "step 4/4 (100%)" in done.stderr
    assert done.stdout == f"{target}  768x1376  seed 42\n"  # one line, however long, for scripts to read
    assert Image.open(target).size == (768, 1376)

    listed = subprocess.run([FLUXHOST, "tasks", "list", "--json"], env=cli_env, capture_output=True, text=True)
    assert json.loads(listed.stdout)[0]["parameters"]["seed"] == "42"
    refused = subprocess.run([FLUXHOST, "run", "x", "--aspect-ratio", "7:3"], env=cli_env, capture_output=True,
                             text=True)
    assert refused.returncode == 2 and "aspectRatio" in refused.stderr
    bad = subprocess.run([FLUXHOST, "tasks", "list"], env={**cli_env, "FLUXHOST_API_KEY": "nope"},
                         capture_output=True, text=True)
    assert bad.returncode == 4 and "Bad credentials" in bad.stderr


def test_the_cli_takes_any_input_says_plain_states_and_logs_in_from_a_script(cli_env, tmp_path):
    def fluxhost(*arguments: str, env=cli_env) -> subprocess.CompletedProcess:
        return subprocess.run([FLUXHOST, *arguments], env=env, capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)

    made = fluxhost("run", "a fox", "-i", "safetyTolerance=5", "-i", "aspectRatio=4:3", "-i", "seed=7",
                    "-o", str(tmp_path))
    assert made.returncode == 0, made.stderr
    assert made.stdout.split()[1:] == ["1184x896", "seed", "7"]  # -i wins over --aspect-ratio's default
    [listed] = json.loads(fluxhost("tasks", "list", "--json").stdout)
    assert (listed["parameters"]["safetyTolerance"], listed["parameters"]["aspectRatio"]) == ("5", "4:3")
    assert "│ done " in fluxhost("tasks", "list").stdout.replace("┃", "│")
    malformed = fluxhost("run", "a fox", "-i", "steps")
    assert malformed.returncode == 2 and "-i takes key=value" in malformed.stderr
    missing = fluxhost("run", "a fox", "-i", "inputImage=@nowhere.png")
    assert missing.returncode == 2 and "No such file for inputImage: nowhere.png" in missing.stderr
    unknown = fluxhost("tasks", "show", "999999")
    assert unknown.returncode == 2 and "No such task: 999999" in unknown.stderr

    scripted = {key: value for key, value in cli_env.items() if not key.startswith("FLUXHOST_API")}
    asked = fluxhost("login", env=scripted)
    assert asked.returncode == 2 and "Not at a terminal: give --api-key and --api-secret" in asked.stderr
    earlier = tmp_path / "config" / "fluxhost" / "credentials.json"  # saved before, readable by all
    earlier.parent.mkdir(parents=True)
    earlier.write_text("{}")
    earlier.chmod(0o644)
    saved = fluxhost("login", "--api-key", cli_env["FLUXHOST_API_KEY"], "--api-secret",
                     cli_env["FLUXHOST_API_SECRET"], env=scripted)
    assert saved.returncode == 0, saved.stderr
    assert earlier.stat().st_mode & 0o777 == 0o600  # the secret it now holds is the owner's alone
    assert fluxhost("tasks", "list", "--json", env=scripted).returncode == 0  # the saved login


def test_ctrl_c_kills_the_remote_task(make_settings, tmp_path):
    with LiveServer(make_settings(steps=100)) as live:
        key = live.service.keys.create(KeyMode.SIGNATURE)
        env = {**os.environ, "FLUXHOST_API_KEY": key.api_key, "FLUXHOST_API_SECRET": key.api_secret,
               "FLUXHOST_SERVER": live.base_url}
        # Started as a terminal would: a shell's background job passes SIGINT on ignored.
        as_from_a_terminal = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                              "from fluxhost.cli import main; sys.argv[0] = 'fluxhost'; main()")
        process = subprocess.Popen([sys.executable, "-c", as_from_a_terminal, "run", "a long one", "-o", str(tmp_path)],
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in process.stderr:
            if line.startswith("step "):
                break
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=60)
        assert process.returncode == 130, rest
        assert "killed" in rest
        with Client(live.base_url, key.api_key, key.api_secret) as client:
            assert client.detail(1).cancelled


def test_a_failing_socket_falls_back_to_polling(sdk, monkeypatch):
    closed = f"ws://127.0.0.1:{free_port()}/v1"
    monkeypatch.setattr("fluxhost.client.sdk._socket_url", lambda base_url: closed)
    progress = []
    info = sdk.run(SLUG, prompt="a heron").wait(timeout=120, via="socket", on_progress=progress.append)
    assert info.succeeded and progress == []  # the result came by polling


def test_reads_are_retried_on_503_and_run_is_not():
    import httpx

    answers = {"Task/List": [503, 503, 200], "Run/a/b": [503, 200]}
    seen: list[str] = []

    def reply(request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/v1/")
        seen.append(path)
        status = answers[path].pop(0)
        if status == "refused":
            raise httpx.ConnectError("connection refused", request=request)
        if status != 200:
            return httpx.Response(status, json={"result": False, "errors": [{"code": 0, "message": "busy"}]})
        if path in ("Task/Cancel", "Task/Kill"):
            return httpx.Response(200, json=SEED_DETAIL_EXAMPLE)
        return httpx.Response(200, json={"result": True, "errors": [], "total": "0", "tasklist": []})

    client = Client("http://fluxhost.test", "key", retries=3, transport=httpx.MockTransport(reply))
    assert client.list_tasks() == [] and seen.count("Task/List") == 3
    with pytest.raises(ProtocolError) as error:
        client.run("a/b", prompt="x")
    assert error.value.status_code == 503 and seen.count("Run/a/b") == 1
    # Cancel and Kill again only after an answer that says the server did nothing (429, 503), never
    # after one that may hide a try that went through (a proxy's 502 or 504): a resend is refused.
    answers.update({"Task/Cancel": [502, 200], "Task/Kill": [504, 200]})
    for stop in (client.cancel, client.kill):
        with pytest.raises(ProtocolError):
            stop(7)
    assert seen.count("Task/Cancel") == seen.count("Task/Kill") == 1
    answers.update({"Task/Kill": [429, 503, "refused", 200]})
    assert client.kill(7).id == int(SEED_DETAIL_EXAMPLE["tasklist"][0]["id"])
    assert seen.count("Task/Kill") == 5


class ProxyInFront(BaseHTTPRequestHandler):
    """A reverse proxy whose server went away after answering a Run: its own HTML page for the rest."""

    def do_POST(self) -> None:  # noqa: N802 (the handler's name)
        self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.path.startswith("/v1/Run/"):
            self._answer(200, b'{"result": true, "errors": [], "taskid": "7", "socketaccesstoken": "' + b"x" * 30
                         + b'"}', "application/json")
        else:
            self._answer(502, b"<html><body>502 Bad Gateway</body></html>", "text/html")

    def do_GET(self) -> None:  # noqa: N802 (the socket's handshake)
        self._answer(502, b"<html><body>502 Bad Gateway</body></html>", "text/html")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args) -> None:
        pass


def test_an_answer_outside_the_protocol_is_said_plainly_never_as_a_stack_trace(tmp_path):
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), ProxyInFront)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    env = {**os.environ, "FLUXHOST_SERVER": f"http://127.0.0.1:{proxy.server_address[1]}", "FLUXHOST_API_KEY": "k",
           "FLUXHOST_API_SECRET": "s", "XDG_CONFIG_HOME": str(tmp_path / "config")}
    try:
        listed = subprocess.run([FLUXHOST, "tasks", "list"], env=env, capture_output=True, text=True, timeout=60)
        waited = subprocess.run([FLUXHOST, "run", "a fox", "-o", str(tmp_path / "fox.png")], env=env,
                                capture_output=True, text=True, timeout=60)
    finally:
        proxy.shutdown()
    for done in (listed, waited):
        assert done.returncode == 3, done.stderr
        assert "Traceback" not in done.stderr and "answer was not usable" in done.stderr, done.stderr
    assert "Task 7 may go on: `fluxhost tasks show 7`" in waited.stderr


def test_a_key_and_its_secret_come_from_one_place_and_a_login_serves_its_own_server(tmp_path, monkeypatch):
    import typer

    from fluxhost.client.cli import config_path, credentials

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    for name in ("FLUXHOST_SERVER", "FLUXHOST_API_KEY", "FLUXHOST_API_SECRET"):
        monkeypatch.delenv(name, raising=False)
    config_path().parent.mkdir(parents=True)
    config_path().write_text(json.dumps({"server": "http://saved.test", "api_key": "SAVED", "api_secret": "S"}))
    assert credentials(None) == ("http://saved.test", "SAVED", "S")
    assert credentials("http://saved.test/") == ("http://saved.test/", "SAVED", "S")
    monkeypatch.setenv("FLUXHOST_API_KEY", "KEY_ONLY")
    assert credentials(None) == ("http://saved.test", "KEY_ONLY", None)  # never with the login's secret
    monkeypatch.delenv("FLUXHOST_API_KEY")
    with pytest.raises(typer.Exit) as refused:  # the login's key is not sent to another server
        credentials("https://other.test")
    assert refused.value.exit_code == 4


def test_the_socket_is_beside_the_calls_also_under_a_path():
    from fluxhost.client.sdk import _socket_url

    assert _socket_url("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/v1"
    assert _socket_url("https://images.example.com/fluxhost/") == "wss://images.example.com/fluxhost/v1"
