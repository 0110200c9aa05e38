"""The seed's own requests, copied verbatim (only host, credentials and the callbackUrl placeholder
changed), run with bash, openssl and curl as a person following the hosted API's page would."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import time

import httpx
import pytest
from PIL import Image

from fluxhost.signing import KeyMode
from fluxhost.statuses import TERMINAL
from tests.helpers import LiveServer, Receiver

pytestmark = pytest.mark.skipif(not (shutil.which("curl") and shutil.which("openssl")), reason="needs curl, openssl")

HEADER_PREPARE = """
export YOUR_API_KEY="{api_key}";
export YOUR_API_SECRET="{api_secret}";
# unix time or any random integer value
export NONCE=$(date +%s);
# hmac-SHA256 (YOUR_API_SECRET+Nonce) with YOUR_API_KEY
export SIGNATURE="$(echo -n "${{YOUR_API_SECRET}}${{NONCE}}" | openssl dgst -sha256 -hmac "${{YOUR_API_KEY}}")";
"""

RUN_COMMAND = """
curl -X POST "{base}/v1/Run/black-forest-labs/flux-pro-1.1" -H "Content-Type: multipart/form-data" -H "x-api-key: ${{YOUR_API_KEY}}" -H "x-nonce: ${{NONCE}}" -H "x-signature: ${{SIGNATURE}}" -d '{{ "prompt": "A quiet, sun-drenched Los Angeles street from a low, eye-level perspective. Tall, slender palm trees line the sidewalk, their fronds swaying gently against a clear, cerulean sky. Vintage streetlights stand sentinel, and the asphalt shimmers with heat. In the distance, the iconic Hollywood Sign is subtly visible between buildings, and the faint outlines of the Hollywood Hills rise beyond. Sunlight casts long, sharp shadows of telephone poles and power lines across the scene. Urban, serene, realistic, street-level view, cinematic lighting, high detail, 8K.", "promptUpsampling": "false", "safetyTolerance": "2", "aspectRatio": "16:9", "seed": "42", "outputFormat": "png"{callback} }}';
"""

DETAIL_COMMAND = """
curl -X POST "{base}/v1/Task/Detail" -H "Content-Type: multipart/form-data" -H "x-api-key: ${{YOUR_API_KEY}}" -H "x-nonce: ${{NONCE}}" -H "x-signature: ${{SIGNATURE}}" -d '{{ "tasktoken": '{token}', }}';
"""

SEED_DETAIL_EXAMPLE = json.loads("""
{ "total": "1", "errors": [], "tasklist": [ { "id": "2221", "uuid": "15bce51f-442f-4f44-a71d-13c6374a62bd",
"socketaccesstoken": "eDcCm5yyUfIvMFspTwww49OUfgXkQt", "parameters": {}, "debugoutput": "", "debugerror": "",
"starttime": "1734513809", "endtime": "1734513813", "elapsedseconds": "6.0000", "status": "task_postprocess_end",
"createtime": "1734513807", "canceltime": "0", "assigntime": "1734513807", "accepttime": "1734513807",
"preprocessstarttime": "1734513807", "preprocessendtime": "1734513807", "postprocessstarttime": "1734513813",
"postprocessendtime": "1734513814", "outputs": [ { "id": "6bc392c93856dfce3a7d1b4261e15af3", "name": "0.png",
"contenttype": "image/png", "parentid": "6c1833f39da71e6175bf292b18779baf",
"uuid": "15bce51f-442f-4f44-a71d-13c6374a62bd", "size": "202472", "addedtime": "1734513812",
"modifiedtime": "1734513812", "accesskey": "dFKlMApaSgMeHKsJyaDeKrefcHahUK",
"url": "https://cdn1.wiro.ai/6a6af820-c5050aee-40bd7b83-a2e186c6-7f61f7da-3894e49c-fc0eeb66-9b500fe2/0.png" } ],
"size": "202472" } ], "result": true }
""")


def bash(script: str) -> dict:
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)


def same_shape(example: object, actual: object, where: str = "") -> None:
    """Every key of ``example`` is in ``actual`` with a value of the same JSON type, recursively."""
    assert type(actual) is type(example), f"{where}: {type(actual).__name__} != {type(example).__name__}"
    if isinstance(example, dict):
        for key, value in example.items():
            assert key in actual, f"{where}.{key} missing"
            if key != "parameters":  # the example's is empty; ours holds the inputs
                same_shape(value, actual[key], f"{where}.{key}")
    elif isinstance(example, list) and example:
        assert actual, f"{where}: empty list"
        same_shape(example[0], actual[0], f"{where}[0]")


@pytest.fixture
def receiver():
    with Receiver() as local:
        yield local


@pytest.mark.parametrize("with_callback", [False, True])
def test_seed_run_and_detail_verbatim(make_settings, receiver, with_callback):
    with LiveServer(make_settings(callback_allowlist="127.0.0.1")) as server:
        check_seed_flow(server, receiver, with_callback)


def check_seed_flow(server, receiver, with_callback):
    callback = f', "callbackUrl": "{receiver.url}"' if with_callback else ""
    key = server.service.keys.create(KeyMode.SIGNATURE)
    prepare = HEADER_PREPARE.format(api_key=key.api_key, api_secret=key.api_secret)
    # The seed exports one NONCE and SIGNATURE and uses them for Run and every Detail poll.
    env = bash(prepare + 'printf \'{"nonce": "%s", "signature": "%s"}\' "$NONCE" "$SIGNATURE"')
    exports = f'export YOUR_API_KEY="{key.api_key}"; export NONCE="{env["nonce"]}"; export SIGNATURE="{env["signature"]}";'

    run = bash(exports + RUN_COMMAND.format(base=server.base_url, callback=callback))
    assert run["result"] is True and run["errors"] == []
    assert list(run) == ["errors", "taskid", "socketaccesstoken", "result"]
    assert run["taskid"].isdigit() and len(run["socketaccesstoken"]) == 30 and run["socketaccesstoken"].isalnum()

    deadline = time.monotonic() + 120
    while True:
        detail = bash(exports + DETAIL_COMMAND.format(base=server.base_url, token=run["socketaccesstoken"]))
        task = detail["tasklist"][0]
        if task["status"] in TERMINAL:
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)

    same_shape(SEED_DETAIL_EXAMPLE, detail)
    assert task["status"] == "task_postprocess_end" and task["pexit"] == "0", task["debugerror"]
    assert task["id"] == run["taskid"]
    assert task["parameters"]["seed"] == "42" and task["parameters"]["aspectRatio"] == "16:9"
    assert task["callbackurl"] == (receiver.url if with_callback else "")
    for field in ("createtime", "accepttime", "preprocessstarttime", "preprocessendtime", "assigntime",
                  "starttime", "endtime", "postprocessstarttime", "postprocessendtime"):
        assert int(task[field]) > 0, field
    assert task["canceltime"] == "0"
    assert float(task["elapsedseconds"]) > 0 and len(task["elapsedseconds"].split(".")[1]) == 4

    [output] = task["outputs"]
    assert output["name"] == "0.png" and output["contenttype"] == "image/png"
    assert len(output["id"]) == 32 and output["uuid"] == task["uuid"]
    image_bytes = httpx.get(output["url"], timeout=30).content
    assert str(len(image_bytes)) == output["size"] == task["size"]
    image = Image.open(io.BytesIO(image_bytes))
    assert image.format == "PNG" and image.size == (1376, 768)  # 16:9 at about one megapixel
    if with_callback:
        [delivery] = receiver.wait_for(1)
        assert json.loads(delivery["body"])["tasklist"][0]["outputs"] == task["outputs"]
