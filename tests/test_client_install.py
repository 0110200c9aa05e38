"""`pip install fluxhost` alone is a client: no torch, no server packages, and `fluxhost run` works from it.

The wheel is built from this checkout and installed into a fresh venv; its dependencies come from the
package registry the machine is configured with, as they would for a user.
"""

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from PIL import Image

from fluxhost.signing import KeyMode

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.network, pytest.mark.slow]


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("client-install")
    source = work / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"),
                    str(source)], check=True, capture_output=True, timeout=300)
    [wheel] = (work / "dist").glob("fluxhost-*.whl")
    target = work / "venv"
    venv.create(target, with_pip=True)
    installed = subprocess.run([str(target / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
                               capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-2000:]
    return target


def test_the_client_install_brings_no_server_packages(client_venv):
    python = str(client_venv / "bin" / "python")
    probe = ("import importlib.util as u; "
             "print(' '.join(m for m in ('torch', 'diffusers', 'fastapi', 'sqlalchemy', 'uvicorn') if u.find_spec(m)))")
    found = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == ""
    imported = subprocess.run([python, "-c", "import fluxhost.client, fluxhost.cli; print('ok')"],
                              capture_output=True, text=True)
    assert imported.stdout.strip() == "ok", imported.stderr

    serve = subprocess.run([str(client_venv / "bin" / "fluxhost"), "serve"], capture_output=True, text=True,
                           timeout=60)
    assert serve.returncode == 1
    assert "from a clone of fluxhost, pip install '.[server]'" in serve.stdout
    assert "Traceback" not in serve.stdout + serve.stderr
    mcp = subprocess.run([str(client_venv / "bin" / "fluxhost"), "mcp"], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "FLUXHOST_API_KEY": "k"})
    assert mcp.returncode == 2 and "pip install 'mcp>=2'" in mcp.stdout + mcp.stderr


def test_fluxhost_run_from_the_client_install(client_venv, server, tmp_path):
    key = server.service.keys.create(KeyMode.SIGNATURE)
    env = {**os.environ, "FLUXHOST_API_KEY": key.api_key, "FLUXHOST_API_SECRET": key.api_secret,
           "XDG_CONFIG_HOME": str(tmp_path / "config")}
    target = tmp_path / "boat.png"
    done = subprocess.run([str(client_venv / "bin" / "fluxhost"), "run", "a boat", "--server", server.base_url,
                           "--aspect-ratio", "1:1", "-o", str(target)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert Image.open(target).size == (1024, 1024)
