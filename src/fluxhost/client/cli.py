"""The client side of the ``fluxhost`` command: run, tasks, tools, login. Speaks the protocol
through :mod:`fluxhost.client` to any server (``--server``, ``FLUXHOST_SERVER``, or the saved login).

Exit codes: 0 done; 1 the task failed; 2 the server refused the request; 3 no server answered;
4 bad credentials; 5 moderated; 6 cancelled or killed; 130 interrupted (the remote task is killed).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from fluxhost import DEFAULT_MODEL
from fluxhost.client import (
    DEFAULT_SERVER,
    AuthenticationError,
    Client,
    FluxhostError,
    ProtocolError,
    ServerUnavailable,
    TaskInfo,
)
from fluxhost.client import Progress as StepProgress

EXIT_FAILED, EXIT_REFUSED, EXIT_NO_SERVER, EXIT_CREDENTIALS, EXIT_MODERATED, EXIT_CANCELLED = 1, 2, 3, 4, 5, 6
EXIT_INTERRUPTED = 130
console = Console(stderr=True)
out = Console()
tasks_app = typer.Typer(help="Your tasks on the server.", no_args_is_help=True)

ServerOption = Annotated[str | None, typer.Option("--server", help="Base URL of the server.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")]
InputsOption = Annotated[list[str] | None, typer.Option(
    "-i", "--input", help="Any input of the model, by its name in `fluxhost tools MODEL`: key=value, a file as "
    "key=@path (repeatable; wins over the options above), e.g. -i steps=28 -i safetyTolerance=4.")]
NO_TASK = "There is no task yet."
"""The hosted API's words for a task id or token it does not know."""


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "fluxhost" / "credentials.json"


def credentials(server: str | None) -> tuple[str, str, str | None]:
    """Server URL from ``--server``, FLUXHOST_SERVER, then the saved login; the API key and secret
    as a pair: FLUXHOST_API_KEY with FLUXHOST_API_SECRET (none: a key-only key), else the saved
    login's, only for the server it was saved for. Exits with a hint when there is no key."""
    saved: dict[str, str] = {}
    if config_path().exists():
        saved = json.loads(config_path().read_text())
    base = server or os.environ.get("FLUXHOST_SERVER") or saved.get("server") or DEFAULT_SERVER
    if api_key := os.environ.get("FLUXHOST_API_KEY"):
        return base, api_key, os.environ.get("FLUXHOST_API_SECRET") or None
    if saved.get("api_key") and saved.get("server", DEFAULT_SERVER).rstrip("/") == base.rstrip("/"):
        return base, saved["api_key"], saved.get("api_secret") or None
    console.print(f"No credentials for {escape(base)}: set FLUXHOST_API_KEY (and FLUXHOST_API_SECRET) or run "
                  "`fluxhost login`.", highlight=False)
    raise typer.Exit(EXIT_CREDENTIALS)


def make_client(server: str | None) -> Client:
    return Client(*credentials(server))


def mcp(server: ServerOption = None, config: Annotated[bool, typer.Option(
        "--config", help="Print the entry for an agent's MCP configuration (this command's absolute path: agents "
        "do not read your shell's PATH) and exit.")] = False) -> None:
    """Serve the Model Context Protocol on stdin/stdout for an LLM agent: generate images, follow,
    cancel and kill tasks, list models. Needs the MCP SDK: `pip install 'mcp>=2'` (the `mcp` extra)."""
    if config:
        out.print_json(data=mcp_configuration(server or os.environ.get("FLUXHOST_SERVER") or DEFAULT_SERVER))
        return
    try:
        from fluxhost.client.mcp import serve_stdio
    except ImportError:
        console.print("`fluxhost mcp` needs the MCP SDK: pip install 'mcp>=2'", markup=False)
        raise typer.Exit(2) from None
    serve_stdio(*credentials(server))


def mcp_configuration(server: str) -> dict[str, Any]:
    """The ``mcpServers`` entry that starts this very ``fluxhost mcp``, by absolute path."""
    command = Path(sys.argv[0]).resolve() if Path(sys.argv[0]).name == "fluxhost" else Path(
        sys.executable).with_name("fluxhost")
    return {"mcpServers": {"fluxhost": {"command": str(command), "args": ["mcp", "--server", server],
                                        "env": {"FLUXHOST_API_KEY": "...", "FLUXHOST_API_SECRET": "..."}}}}


def fail_on(error: Exception) -> typer.Exit:
    """Say what went wrong and pick the exit code."""
    if isinstance(error, AuthenticationError):
        console.print(f"[red]Bad credentials:[/] {escape(error.message)}")
        return typer.Exit(EXIT_CREDENTIALS)
    if isinstance(error, ServerUnavailable):
        console.print(f"[red]No server:[/] {escape(str(error))}")
        return typer.Exit(EXIT_NO_SERVER)
    if isinstance(error, ProtocolError):
        console.print(f"[red]Refused:[/] {escape(error.message)}")
        return typer.Exit(EXIT_REFUSED)
    if isinstance(error, FluxhostError | httpx.HTTPError):  # an answer not in the protocol, a download cut off
        console.print(f"[red]The server's answer was not usable:[/] {escape(str(error))}")
        return typer.Exit(EXIT_NO_SERVER)
    raise error


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("edit")(edit)
    app.command("tools")(tools)
    app.command("login")(login)
    app.command("mcp")(mcp)
    app.add_typer(tasks_app, name="tasks")


def run(
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    aspect_ratio: Annotated[str, typer.Option("--aspect-ratio", help="1:1, 16:9, 9:16, 4:3, ...")] = "16:9",
    seed: Annotated[str | None, typer.Option(help="0 to 4294967295; default: random, printed.")] = None,
    output_format: Annotated[str, typer.Option("--format", help="png or jpeg")] = "png",
    model: Annotated[str, typer.Option(help="Model slug, owner/project.")] = DEFAULT_MODEL,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="File or folder to save to.")] = None,
    server: ServerOption = None,
    more: InputsOption = None,
) -> None:
    """Generate an image: shows progress, saves the image, prints its path, size and seed."""
    inputs: dict[str, Any] = {"prompt": prompt, "aspectRatio": aspect_ratio, "outputFormat": output_format}
    _generate(make_client(server), model, {**inputs, **given_inputs(more)}, seed, output)


def edit(
    image: Annotated[str, typer.Argument(help="The image to edit: a file, or an http(s) URL.")],
    prompt: Annotated[str, typer.Argument(help="What to change, e.g. \"make the sky purple\".")],
    aspect_ratio: Annotated[str, typer.Option("--aspect-ratio", help="Default: the input image's.")] = "",
    seed: Annotated[str | None, typer.Option(help="0 to 4294967295; default: random, printed.")] = None,
    output_format: Annotated[str, typer.Option("--format", help="png or jpeg")] = "png",
    model: Annotated[str, typer.Option(help="An editing model's slug.")] = "black-forest-labs/flux-kontext-pro",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="File or folder to save to.")] = None,
    server: ServerOption = None,
    more: InputsOption = None,
) -> None:
    """Edit an image by instruction: shows progress, saves the result, prints its path, size and seed."""
    inputs: dict[str, Any] = {"prompt": prompt, "outputFormat": output_format}
    if aspect_ratio:
        inputs["aspectRatio"] = aspect_ratio
    if image.startswith(("http://", "https://")):
        inputs["inputImageUrl"] = image
    else:
        path = Path(image)
        if not path.is_file():
            console.print(f"[red]No such image file:[/] {escape(image)}")
            raise typer.Exit(EXIT_REFUSED)
        inputs["inputImage"] = path
    _generate(make_client(server), model, {**inputs, **given_inputs(more)}, seed, output)


def given_inputs(pairs: list[str] | None) -> dict[str, str | Path]:
    """``-i key=value`` options as inputs (``key=@path``: the file, uploaded); exit 2 on a malformed one."""
    inputs: dict[str, str | Path] = {}
    for pair in pairs or []:
        key, equals, value = pair.partition("=")
        if not equals or not key.strip():
            console.print(f"[red]-i takes key=value:[/] {escape(pair)!r} has no key or no '='", highlight=False)
            raise typer.Exit(EXIT_REFUSED)
        if value.startswith("@"):
            path = Path(value[1:]).expanduser()
            if not path.is_file():
                console.print(f"[red]No such file for {escape(key)}:[/] {escape(value[1:])}", highlight=False)
                raise typer.Exit(EXIT_REFUSED)
            inputs[key.strip()] = path
        else:
            inputs[key.strip()] = value
    return inputs


def _generate(client: Client, model: str, inputs: dict[str, Any], seed: str | None, output: Path | None) -> None:
    """Run, follow with progress (Ctrl-C kills the task), save; exit with the documented codes."""
    if seed is not None:
        inputs["seed"] = seed
    try:
        task = client.run(model, **inputs)
    except FluxhostError as error:
        raise fail_on(error) from None
    console.print(f"Task {task.id} queued on {client.base_url}", highlight=False)
    try:
        info = _follow(task)
    except KeyboardInterrupt:
        try:
            task.kill()
            console.print(f"Interrupted: task {task.id} killed.")
        except FluxhostError as error:
            console.print(f"Interrupted: task {task.id} could not be killed ({escape(str(error))}).")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except FluxhostError as error:
        console.print(f"Task {task.id} may go on: `fluxhost tasks show {task.id}` tells how it ends.")
        raise fail_on(error) from None
    if info.cancelled:
        console.print(f"Task {task.id} was cancelled.")
        raise typer.Exit(EXIT_CANCELLED)
    if not info.succeeded:
        moderated = "moderated" in info.debugerror.lower()
        what = "was moderated" if moderated else "failed"
        console.print(f"[red]Task {task.id} {what}:[/] {escape(info.debugerror)}")
        raise typer.Exit(EXIT_MODERATED if moderated else EXIT_FAILED)
    for line in info.debugoutput.splitlines():
        if line.startswith("Note: "):
            console.print(f"[yellow]{escape(line)}[/]", highlight=False)
    try:
        saved = _save(client, info, output)
    except (FluxhostError, httpx.HTTPError) as error:
        console.print(f"Task {task.id} made its image: `fluxhost tasks show {task.id}` gives its URL.")
        raise fail_on(error) from None
    for path in saved:
        from PIL import Image

        with Image.open(path) as image:
            width, height = image.size
        out.print(f"{path}  {width}x{height}  seed {info.seed}", highlight=False, soft_wrap=True)


def _follow(task) -> TaskInfo:
    """Wait for the task over the socket, showing a bar on a terminal, lines elsewhere."""
    if console.is_terminal:
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[speed]}"), TimeRemainingColumn())
        with Progress(*columns, console=console, transient=True) as bar:
            steps = bar.add_task("Generating", total=None, speed="")

            def show(progress: StepProgress) -> None:
                bar.update(steps, total=progress.total, completed=progress.step,
                           speed=f"{progress.speed:.2f} {progress.speed_type}")

            return task.wait(on_progress=show)

    def say(progress: StepProgress) -> None:
        console.print(f"step {progress.step}/{progress.total} ({progress.percentage}%), "
                      f"{progress.speed:.2f} {progress.speed_type}, {progress.remaining} left", highlight=False)

    return task.wait(on_progress=say)


def _save(client: Client, info: TaskInfo, output: Path | None) -> list[Path]:
    if output is None or output.is_dir() or not output.suffix:
        return client.download(info, output or Path.cwd())
    saved = client.download(info, output.parent if str(output.parent) else Path.cwd())
    saved[0].replace(output)
    return [output, *saved[1:]]


def _print_tasks(found: list[TaskInfo], as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps([info.model_dump(by_alias=True) for info in found]))
        return
    table = Table("id", "status", "seconds", "outputs", "prompt")
    for info in found:
        prompt = str(info.parameters.get("prompt", ""))
        table.add_row(str(info.id), info.state, f"{info.elapsedseconds:.2f}",
                      "\n".join(o.url for o in info.outputs), prompt[:40] + ("…" if len(prompt) > 40 else ""))
    out.print(table)


@tasks_app.command("list")
def tasks_list(start: int = 0, limit: int = 20, server: ServerOption = None, as_json: JsonOption = False) -> None:
    """Your tasks, newest first."""
    try:
        _print_tasks(make_client(server).list_tasks(start, limit), as_json)
    except FluxhostError as error:
        raise fail_on(error) from None


def _one(task: str, action: Callable[[Client], TaskInfo | None], server: str | None, as_json: bool) -> None:
    """Do ``action`` on ``task`` with a client and show the task it returns."""
    client = make_client(server)
    try:
        info = action(client)
    except FluxhostError as error:
        if isinstance(error, ProtocolError) and error.message == NO_TASK:
            console.print(f"[red]No such task:[/] {escape(task)} (not an id or socket token of your project's tasks)",
                          highlight=False)
            raise typer.Exit(EXIT_REFUSED) from None
        raise fail_on(error) from None
    if info is not None:
        _print_tasks([info], as_json)


@tasks_app.command("show")
def tasks_show(task: str, server: ServerOption = None, as_json: JsonOption = False) -> None:
    """One task, by id or socket token."""
    _one(task, lambda client: client.detail(task), server, as_json)


@tasks_app.command("cancel")
def tasks_cancel(task: str, server: ServerOption = None, as_json: JsonOption = False) -> None:
    """Cancel a queued task."""
    _one(task, lambda client: client.cancel(task), server, as_json)


@tasks_app.command("kill")
def tasks_kill(task: str, server: ServerOption = None, as_json: JsonOption = False) -> None:
    """Stop a running task."""
    _one(task, lambda client: client.kill(task), server, as_json)


@tasks_app.command("delete")
def tasks_delete(task: str, server: ServerOption = None) -> None:
    """Delete an ended task's files (the record stays)."""
    _one(task, lambda client: client.delete_files(task), server, False)
    console.print("Files deleted.")


def tools(slug: Annotated[str | None, typer.Argument(help="A model slug: show its inputs.")] = None,
          server: ServerOption = None, as_json: JsonOption = False) -> None:
    """The models the server offers, or one model's inputs."""
    client = make_client(server)
    try:
        found = [client.tool(slug)] if slug else client.tools()
    except FluxhostError as error:
        raise fail_on(error) from None
    if as_json:
        out.print_json(json.dumps(found))
        return
    if not slug:
        table = Table("model", "description")
        for tool in found:
            table.add_row(f"{tool['slugowner']}/{tool['slugproject']}", tool.get("description", ""))
        out.print(table)
        return
    table = Table("input", "type", "default", "values")
    for group in found[0].get("parameters") or []:
        for item in group["items"]:
            values = ", ".join(str(o["value"]) for o in item.get("options", []))
            default = str(item.get("default", ""))
            table.add_row(item["id"] + (" *" if item.get("required") else ""), item["type"],
                          default[:30] + ("…" if len(default) > 30 else ""), values)
    out.print(table)


def login(
    api_key: Annotated[str | None, typer.Option(envvar="FLUXHOST_API_KEY", help="Your API key.")] = None,
    api_secret: Annotated[str | None, typer.Option(envvar="FLUXHOST_API_SECRET",
                                                   help="Its secret ('' for a key-only key).")] = None,
    server: Annotated[str, typer.Option(envvar="FLUXHOST_SERVER", help="The server's base URL.")] = DEFAULT_SERVER,
) -> None:
    """Check credentials against the server and save them for later commands. Asks for what the
    options and environment do not give, at a terminal; in a script, give them."""
    if api_key is None or api_secret is None:
        if not sys.stdin.isatty():
            console.print("[red]Not at a terminal:[/] give --api-key and --api-secret (or FLUXHOST_API_KEY and "
                          "FLUXHOST_API_SECRET; --api-secret '' for a key-only key).", highlight=False)
            raise typer.Exit(EXIT_REFUSED)
        api_key = api_key if api_key is not None else typer.prompt("API key")
        api_secret = api_secret if api_secret is not None else typer.prompt(
            "API secret ('' for a key-only key)", default="", hide_input=True, show_default=False)
    client = Client(server, api_key, api_secret or None)
    try:
        client.tools()
    except FluxhostError as error:
        raise fail_on(error) from None
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    if hasattr(os, "fchmod"):  # the mode above is for a new file: one saved before is narrowed too
        os.fchmod(descriptor, 0o600)
    with open(descriptor, "w") as file:
        json.dump({"server": server, "api_key": api_key, "api_secret": api_secret}, file)
    console.print(f"Saved to {path}.")
