"""The README's examples run as written (issue 31).

Every ```bash and ```python block of README.md runs, in the README's order, the way a reader runs
them in one terminal after `make serve`'s install: against ``fluxhost serve`` started as `make serve`
starts it (the demo model, SQLite and local files, here in a temporary data folder on a free
loopback port), with the key its first start printed. Bash blocks run with ``bash -euo pipefail``
and the variables a block exports are set for the blocks after it, as in one shell; Python blocks
run with this interpreter. All run in one temporary folder holding ``.venv`` (a link to this
environment, as in a clone after the install), with this interpreter's folder first on PATH, and
each must exit 0, and its output must show no refusal (``"result":false``, BFL's
``"Task not found"``): curl exits 0 whatever the server answers. ```json blocks must parse.

The text runs verbatim but for these substitutions, and only these:

- ``http://127.0.0.1:8000`` -> the test server's address, which the client commands, whose
  default server is that address, are given as ``FLUXHOST_SERVER``;
- credentials shown as ``...`` (``API_KEY=...``, ``FLUXHOST_API_SECRET=...``, ``api_key="..."``)
  -> the test key's.

A block that cannot run here (the install itself, a GPU, hub weights, a fleet, minutes of
training, another model than the demo) has ``<!-- not run by tests/test_readme.py: REASON -->`` on
the line right before its fence.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from tests.helpers import ServiceProcess, free_port, wait_until_ready

README = Path(__file__).resolve().parents[1] / "README.md"
RUNNABLE = ("bash", "python")
NOT_RUN = re.compile(r"<!-- not run by tests/test_readme\.py: (?P<reason>\S.*?) -->\s*")
README_ADDRESS = "http://127.0.0.1:8000"
AT_LEAST_RUN = 6
BLOCK_TIMEOUT_SECONDS = 300
REFUSALS = ('"result":false', '"status":"Task not found"')
"""What the server's answers say when a request was refused (printed by curl)."""
SHELL_BOOKKEEPING = {"_", "SHLVL", "PWD", "OLDPWD"}
"""Variables every shell sets for itself: not what a block exported."""


@dataclass(frozen=True)
class Block:
    language: str
    code: str
    line: int
    """Of its opening fence, counted from 1."""
    not_run: str | None
    """The reason given in the comment right before the fence, if any."""


def readme_blocks() -> list[Block]:
    """The README's fenced code blocks, in order, each with its not-run reason if it has one."""
    tokens = MarkdownIt().parse(README.read_text())
    blocks = []
    for before, token in zip([None, *tokens], tokens, strict=False):
        if token.type != "fence":
            continue
        reason = None
        if before is not None and before.type == "html_block" and before.map[1] == token.map[0]:
            comment = NOT_RUN.fullmatch(before.content)
            reason = comment["reason"] if comment else None
        blocks.append(Block(token.info.strip(), token.content, token.map[0] + 1, reason))
    return blocks


def as_run_here(code: str, base_url: str, api_key: str, api_secret: str) -> str:
    """The block with the docstring's substitutions made, and no others."""
    code = code.replace(README_ADDRESS, base_url)
    for pattern, value in ((r"\b((?:FLUXHOST_)?API_KEY=)\.\.\.", api_key),
                           (r"\b((?:FLUXHOST_)?API_SECRET=)\.\.\.", api_secret),
                           (r'\b(api_key=")\.\.\.(?=")', api_key),
                           (r'\b(api_secret=")\.\.\.(?=")', api_secret)):
        code = re.sub(pattern, lambda found, value=value: found[1] + value, code)
    return code


class Terminal:
    """A reader's terminal: one working folder, and the variables exported so far."""

    def __init__(self, folder: Path, env: dict[str, str]):
        self.folder = folder
        self.env = env
        self._exported = folder.parent / "exported.env"

    def run(self, block: Block, code: str) -> tuple[int | None, str]:
        """Exit status (None: it ran out of time) and output of one block."""
        script = self.folder.parent / f"readme-line-{block.line}.{'sh' if block.language == 'bash' else 'py'}"
        if block.language == "bash":
            script.write_text(f"{code}\nenv -0 > {shlex.quote(str(self._exported))}\n")
            command = ["bash", "-euo", "pipefail", str(script)]
        else:
            script.write_text(code)
            command = [sys.executable, str(script)]
        try:
            done = subprocess.run(command, cwd=self.folder, env=self.env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=BLOCK_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired as late:
            output = late.output or b""  # bytes, text=True notwithstanding
            return None, output if isinstance(output, str) else output.decode(errors="replace")
        if done.returncode == 0 and block.language == "bash":
            self._keep_exports()
        return done.returncode, done.stdout

    def _keep_exports(self) -> None:
        for entry in self._exported.read_text().split("\0"):
            name, equals, value = entry.partition("=")
            if equals and name not in SHELL_BOOKKEEPING:
                self.env[name] = value


@pytest.fixture
def venv() -> Path:
    """This interpreter's virtual environment, which the README's `. .venv/bin/activate` activates."""
    if not Path(sys.prefix, "bin", "activate").is_file():
        pytest.skip("the README's examples run in the install's virtual environment (make's .venv)")
    return Path(sys.prefix)


@pytest.fixture
def started(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """``fluxhost serve`` as `make serve` runs it, with its data in a temporary folder: its
    address, and the API key and secret its first start printed."""
    port = free_port()
    process = ServiceProcess(["serve", "--port", str(port)], {
        "FLUXHOST_DATA_DIR": str(tmp_path / "data"), "FLUXHOST_HOST": "127.0.0.1"})
    try:
        base_url = f"http://127.0.0.1:{port}"
        process.wait_for("api secret:")
        wait_until_ready(base_url, process)
        api_key = re.search(r"api key:\s+(\S+)", process.output)[1]
        api_secret = re.search(r"api secret:\s+(\S+)", process.output)[1]
        yield base_url, api_key, api_secret
    finally:
        process.stop()


def test_every_block_is_run_checked_or_says_why_not():
    blocks = readme_blocks()
    other = [(block.line, block.language) for block in blocks if block.language not in (*RUNNABLE, "json", "")]
    assert not other, f"README.md: blocks in a language this test neither runs nor checks: {other}"
    comments = README.read_text().count("<!-- not run by tests/test_readme.py")
    reasons = [block for block in blocks if block.not_run is not None]
    assert len(reasons) == comments, "a not-run comment that is not on the line right before a fence"
    assert all(block.language in RUNNABLE for block in reasons), [block.line for block in reasons]
    run = [block for block in blocks if block.language in RUNNABLE and block.not_run is None]
    assert len(run) >= AT_LEAST_RUN, [block.line for block in run]


def test_json_blocks_parse():
    configs = [block for block in readme_blocks() if block.language == "json"]
    assert configs
    for block in configs:
        try:
            json.loads(block.code)
        except json.JSONDecodeError as error:
            pytest.fail(f"README.md line {block.line}: {error}\n{block.code}")


@pytest.mark.slow
def test_bash_and_python_blocks_run_as_written(venv: Path, started, tmp_path: Path):
    base_url, api_key, api_secret = started
    folder = tmp_path / "clone"
    folder.mkdir()
    (folder / ".venv").symlink_to(venv)
    env = {name: value for name, value in os.environ.items() if not name.startswith("FLUXHOST_")}
    env |= {"PATH": os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")]),
            "FLUXHOST_SERVER": base_url, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    terminal = Terminal(folder, env)

    failures = []
    for block in readme_blocks():
        if block.language not in RUNNABLE or block.not_run is not None:
            continue
        code = as_run_here(block.code, base_url, api_key, api_secret)
        status, output = terminal.run(block, code)
        refused = [words for words in REFUSALS if words.replace(" ", "") in output.replace(" ", "")]
        if status != 0 or refused:
            ended = (f"ran past {BLOCK_TIMEOUT_SECONDS} s" if status is None else
                     f"exited {status}" if status else f"printed {refused[0]}")
            failures.append(f"README.md line {block.line} ({block.language}) {ended}:\n{code}--- its output:\n{output}")
    assert not failures, "\n\n".join(failures)
