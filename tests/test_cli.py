"""The command line: keys, models, and a first `fluxhost serve` as a newcomer sees it."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fluxhost.cli import app
from fluxhost.signing import KeyMode
from fluxhost.store.keys import NewKey
from tests.helpers import ProtocolClient, free_port

FLUXHOST = str(Path(sys.executable).with_name("fluxhost"))


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FLUXHOST_DATA_DIR", str(tmp_path / "data"))
    return CliRunner()


def test_keys_create_list_revoke(cli_env):
    created = cli_env.invoke(app, ["keys", "create", "--json", "--name", "ci", "--project", "team"])
    assert created.exit_code == 0, created.output
    key = json.loads(created.output)
    assert {"api_key", "api_secret", "webhook_secret"} <= set(key) and key["mode"] == "signature"
    assert key["webhook_secret"].startswith("whsec_")
    key_only = json.loads(cli_env.invoke(app, ["keys", "create", "--json", "--mode", "key-only"]).output)
    assert key_only["project"] != "team" and key_only["mode"] == "key-only"

    listed = json.loads(cli_env.invoke(app, ["keys", "list", "--json"]).output)
    assert [(k["name"], k["project"], k["revoked"]) for k in listed][0] == ("ci", "team", False)
    table = cli_env.invoke(app, ["keys", "list"]).output
    assert key["api_key"][:8] in table and key["api_secret"] not in table

    assert cli_env.invoke(app, ["keys", "revoke", key["api_key"][:8]]).exit_code == 0
    assert json.loads(cli_env.invoke(app, ["keys", "list", "--json"]).output)[0]["revoked"] is True
    assert cli_env.invoke(app, ["keys", "revoke", "nothing"]).exit_code == 1


@pytest.mark.slow  # `fluxhost` processes
def test_models_build_tiny_writes_a_loadable_pipeline(cli_env, tmp_path):
    result = cli_env.invoke(app, ["models", "build-tiny", str(tmp_path / "tiny")])
    assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "tiny" / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"
    klein = cli_env.invoke(app, ["models", "build-tiny", str(tmp_path / "klein"), "--family", "klein"])
    assert klein.exit_code == 0, klein.output
    assert json.loads((tmp_path / "klein" / "model_index.json").read_text())["_class_name"] == "Flux2KleinPipeline"
    vae = json.loads((tmp_path / "tiny" / "vae" / "config.json").read_text())
    assert vae["latent_channels"] == 16 and len(vae["block_out_channels"]) == 4  # scale factor 8


@pytest.mark.slow  # `fluxhost` processes
def test_first_serve_prints_a_key_and_a_request_that_works(tmp_path):
    port = free_port()
    env = {**os.environ, "FLUXHOST_DATA_DIR": str(tmp_path / "data"), "FLUXHOST_PORT": str(port),
           "PATH": "/usr/bin:/bin"}  # a newcomer's shell: the environment not activated
    env.pop("FLUXHOST_MODELS", None)
    process = subprocess.Popen([FLUXHOST, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    lines: list[str] = []
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith("The fluxhost command"):
                break
        banner = "".join(lines)
        assert f"is {FLUXHOST}: not on your PATH; `. {Path(FLUXHOST).parent}/activate` puts it there." in banner
        assert "Serving black-forest-labs/flux-pro-1.1 from the fluxhost demo model" in banner
        assert "The demo model draws one or two flat shapes" in banner
        assert "For real pictures on a GPU: FLUXHOST_FLUX_PRO_MODEL=schnell make serve" in banner
        commands = [line.strip() for line in lines if line.strip().startswith(("export ", "curl "))]
        assert len(commands) == 4, banner
        time.sleep(0.5)
        answer = None
        for _ in range(100):  # the port opens a moment after the banner
            done = subprocess.run(["bash", "-c", "; ".join(commands)], capture_output=True, text=True, timeout=30)
            if done.stdout:
                answer = json.loads(done.stdout)
                break
            time.sleep(0.2)
        assert answer and answer["result"] is True and answer["taskid"] == "1"
        api_key = re.search(r"api key: +(\w{32})", banner).group(1)
        api_secret = re.search(r"api secret: +(\w{32})", banner).group(1)
        key = NewKey(1, "", "", KeyMode.SIGNATURE, api_key, api_secret, "")
        task = ProtocolClient(f"http://127.0.0.1:{port}", key).wait("1")
        assert task["pexit"] == "0" and task["outputs"]
    finally:
        process.kill()
        process.wait(10)
    assert not (tmp_path / "data" / "models").exists()  # the demo model ships in the package: nothing is built


@pytest.mark.slow  # `fluxhost` processes
def test_a_worker_says_what_it_needs_and_what_it_cannot_reach(tmp_path):
    env = {**os.environ, "FLUXHOST_DATA_DIR": str(tmp_path / "data")}
    no_broker = subprocess.run([FLUXHOST, "worker"], env=env, capture_output=True, text=True, timeout=60)
    assert no_broker.returncode == 2 and "set FLUXHOST_BROKER_URL" in no_broker.stdout
    closed = free_port()  # nothing listens there
    unreachable = subprocess.run([FLUXHOST, "worker"], env={**env, "FLUXHOST_BROKER_URL": f"redis://127.0.0.1:{closed}/0"},
                                 capture_output=True, text=True, timeout=60)
    assert unreachable.returncode == 1 and unreachable.stdout.startswith("Could not reach Redis")
    assert "Traceback" not in unreachable.stdout + unreachable.stderr


@pytest.mark.parametrize(("environment", "line"), [
    ({"FLUXHOST_PORT": "abc"}, "FLUXHOST_PORT='abc': Input should be a valid integer, unable to parse string as an "
                               "integer"),
    ({"FLUXHOST_TORCH_THREADS": "0"}, "FLUXHOST_TORCH_THREADS='0': Input should be greater than or equal to 1"),
    ({"FLUXHOST_MODELS": '{"a/b": {"steps": 3}'}, "FLUXHOST_MODELS is not valid JSON: Expecting ',' delimiter at "
                                                 "line 1, column 21 (character 20): ...'{\"a/b\": {\"steps\": 3}'..."),
    ({"FLUXHOST_MODELS": '{"a/b": {"stepz": 3}}'}, "FLUXHOST_MODELS['a/b'].stepz=3: a model has no such option; its "
                                                   "options: weights, dtype, transformer, "),
    ({"FLUXHOST_MODELS": '{"a/b": {"dtype": "f8"}}'}, "FLUXHOST_MODELS['a/b'].dtype='f8': Input should be 'auto', "
                                                      "'float32', 'bfloat16' or 'float16'"),
])
def test_a_setting_that_cannot_be_read_is_one_line_naming_it_its_value_and_what_is_allowed(monkeypatch, environment,
                                                                                             line):
    from fluxhost.settings import Settings, settings_problems

    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError) as caught:
        Settings()
    [problem] = settings_problems(caught.value)
    assert problem.startswith(line) and "setting" not in problem.rpartition(":")[2].split(", ")
    assert settings_problems(ValueError("something else")) == []


def test_a_bare_word_that_is_no_preset_is_refused_as_weights(tmp_path):
    from fluxhost.models import served_models
    from fluxhost.settings import ModelSettings, Settings

    with pytest.raises(ValueError, match=r"^FLUXHOST_FLUX_PRO_MODEL='turbo' is not a preset \(schnell, "):
        served_models(Settings(data_dir=tmp_path, flux_pro_model="turbo"))
    with pytest.raises(ValueError, match=r"^FLUXHOST_MODELS\['a/b'\]\.weights='fluxdev' is not a preset"):
        served_models(Settings(data_dir=tmp_path, models={"a/b": ModelSettings(weights="fluxdev")}))
    assert served_models(Settings(data_dir=tmp_path, flux_pro_model="owner/weights"))  # a hub id (or a folder there)


@pytest.mark.slow  # `fluxhost` processes
def test_serve_says_in_one_line_what_is_wrong_before_creating_anything(tmp_path):
    import socket

    env = {**os.environ, "FLUXHOST_DATA_DIR": str(tmp_path / "data")}
    bad_port = subprocess.run([FLUXHOST, "serve"], env={**env, "FLUXHOST_PORT": "abc"}, capture_output=True, text=True,
                              timeout=60)
    assert (bad_port.returncode, bad_port.stdout.count("\n"), bad_port.stderr) == (2, 1, "")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        in_use = subprocess.run([FLUXHOST, "serve"], env={**env, "FLUXHOST_PORT": str(port)}, capture_output=True,
                                text=True, timeout=60)
    assert in_use.returncode == 2
    assert in_use.stdout == f"Cannot listen on 127.0.0.1:{port}: the port is in use (another fluxhost?). Stop it, or " \
                           "choose another with FLUXHOST_PORT or --port.\n"
    assert not (tmp_path / "data").exists()  # no key, no database
