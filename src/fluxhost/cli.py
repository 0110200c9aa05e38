"""The ``fluxhost`` command: serve, keys, models."""

from __future__ import annotations

import errno
import json
import shlex
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fluxhost import DEFAULT_MODEL, spin_while_waiting
from fluxhost.client.cli import register as register_client_commands
from fluxhost.signing import KeyMode

app = typer.Typer(help="fluxhost: a self-hosted FLUX text-to-image service.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys and their projects.", no_args_is_help=True)
models_app = typer.Typer(help="Models and weights.", no_args_is_help=True)
callbacks_app = typer.Typer(help="Callback deliveries and their attempts.", no_args_is_help=True)
db_app = typer.Typer(help="The database.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(models_app, name="models")
app.add_typer(callbacks_app, name="callbacks")
app.add_typer(db_app, name="db")
console = Console()
register_client_commands(app)


# What the ``server`` extra brings: a command that needs one of them is a server command.
SERVER_PACKAGES = frozenset({
    "fastapi", "starlette", "uvicorn", "multipart", "pydantic_settings", "sqlalchemy", "alembic", "yaml",
    "torch", "diffusers", "accelerate", "transformers", "safetensors", "sentencepiece", "google",
    "psycopg", "redis", "celery", "kombu", "boto3", "botocore",
})


def main() -> None:
    """The ``fluxhost`` entry point: on a client-only install, server commands say what to install;
    a setting that cannot be read is one line (the setting, its value, what is allowed), exit 2."""
    try:
        app()
    except ModuleNotFoundError as error:
        if (error.name or "").partition(".")[0] not in SERVER_PACKAGES:
            raise
        console.print(f"This command runs the server, which needs {error.name} (not installed here): from a clone "
                      "of fluxhost, pip install '.[server]'", markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(1) from None
    except ValueError as error:
        problems = _settings_problems(error)
        if not problems:
            raise
        for problem in problems:
            console.print(problem, markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(2) from None


def _settings_problems(error: ValueError) -> list[str]:
    try:
        from fluxhost.settings import settings_problems
    except ImportError:  # a client-only install reads no server settings
        return []
    return settings_problems(error)


def _settings():
    """The server's settings, imported when a server command needs them."""
    from fluxhost.settings import Settings

    return Settings()


def _database(settings):
    from fluxhost.store.database import Database

    db = Database(settings.resolved_database_url)
    db.migrate()
    return db


def _served_models(settings):
    """The models the settings serve, or a one-line reason (an unknown preset) and exit 2."""
    from fluxhost.models import served_models

    try:
        return served_models(settings)
    except ValueError as error:
        console.print(str(error), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _key_store(settings):
    from fluxhost.store.keys import KeyStore

    return KeyStore(_database(settings))


def _first_key_banner(key, settings, models) -> str:
    """What a first start prints: the new key and a Run request ready to paste."""
    base = settings.resolved_public_url
    run = f"{base}/v1/Run/{DEFAULT_MODEL}"
    from fluxhost.demo import EXAMPLE_PROMPT, serves_demo

    served = models.get(DEFAULT_MODEL)
    prompt = EXAMPLE_PROMPT if served is not None and serves_demo(served) else "a lighthouse on a cliff at dusk"
    body = json.dumps({"prompt": prompt, "aspectRatio": "16:9", "seed": "42"})
    return "\n".join(
        [
            "No API key existed, so one was created. Keep the secret: it is shown only now.",
            f"  api key:        {key.api_key}",
            f"  api secret:     {key.api_secret}",
            f"  webhook secret: {key.webhook_secret}",
            "Try it:",
            f"  export API_KEY={key.api_key} API_SECRET={key.api_secret}",
            "  export NONCE=$(date +%s)",
            '  export SIGNATURE=$(echo -n "${API_SECRET}${NONCE}" | openssl dgst -sha256 -hmac "${API_KEY}" '
            "| awk '{print $NF}')",
            f'  curl -X POST {run} -H "x-api-key: $API_KEY" -H "x-nonce: $NONCE" '
            f'-H "x-signature: $SIGNATURE" -d {shlex.quote(body)}',
        ]
    )


def _real_pictures_hint() -> str:
    from fluxhost.models import PRESETS

    schnell = PRESETS["schnell"]
    return (f"For real pictures on a GPU: FLUXHOST_FLUX_PRO_MODEL=schnell make serve  ({schnell.title}, about "
            f"{schnell.download_gb} GB, downloaded on first start; `fluxhost models pull schnell` shows the "
            "download). Presets: " + ", ".join(PRESETS) + ".")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
) -> None:
    """Run the API, with its worker unless FLUXHOST_WORKER_CONCURRENCY=0 or a broker is set (then
    `fluxhost worker` processes run the tasks)."""
    import uvicorn

    from fluxhost.app import UVICORN_OPTIONS, create_app
    from fluxhost.settings import Settings

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = Settings(**overrides)
    _check_port(settings.host, settings.port)
    _configure_observability(settings)
    service = _connected_service(settings)
    if service.keys.count_active() == 0:
        key = service.keys.create(KeyMode.SIGNATURE, name="first key")
        console.print(_first_key_banner(key, settings, service.models), highlight=False, soft_wrap=True)
    from fluxhost.demo import CAN_DRAW, CAN_EDIT, DEMO_LABEL, serves_demo

    for slug, model in service.models.items():
        source = f"the {DEMO_LABEL}" if serves_demo(model) else model.weights
        engine = "bench engine (load tests only)" if settings.engine == "bench" else source
        console.print(f"[bold yellow]Serving {slug} from {escape(engine)}[/]", highlight=False, soft_wrap=True)
    if settings.engine != "bench" and any(serves_demo(model) for model in service.models.values()):
        console.print(CAN_DRAW, markup=False, highlight=False, soft_wrap=True)
        if any(serves_demo(model) and model.kontext for model in service.models.values()):  # its editor serves
            console.print(CAN_EDIT, markup=False, highlight=False, soft_wrap=True)
        console.print(_real_pictures_hint(), markup=False, highlight=False, soft_wrap=True)
    console.print(f"API on {settings.resolved_public_url}/v1  (data in {settings.data_dir.resolve()})", soft_wrap=True)
    console.print(f"Playground: {settings.resolved_public_url}/  (it asks for an API key and secret)", soft_wrap=True)
    if shutil.which("fluxhost") is None:
        command = Path(sys.argv[0]).resolve()
        console.print(f"The fluxhost command (run, edit, tasks, tools, login, mcp) is {command}: not on your PATH; "
                      f"`. {command.parent}/activate` puts it there.", markup=False, highlight=False, soft_wrap=True)
    if settings.broker_url:
        console.print("Tasks go to the broker: start `fluxhost worker` processes to run them.", soft_wrap=True)
    elif not settings.worker_concurrency:
        console.print("No worker in this process (FLUXHOST_WORKER_CONCURRENCY=0).", soft_wrap=True)
    # uvicorn shuts down gracefully on SIGTERM (listener closed, requests answered, then the service
    # stops: running tasks get FLUXHOST_SHUTDOWN_GRACE_SECONDS), then raises the signal again: a
    # stop asked for and done ends with status 0, as service managers expect.
    signal.signal(signal.SIGTERM, _exit_quietly)
    uvicorn.run(create_app(service), host=settings.host, port=settings.port, **UVICORN_OPTIONS)


def _check_port(host: str, port: int) -> None:
    """Exit with one line when the address cannot be listened on, before anything is created (a key,
    a database): binding it here is what uvicorn will do."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as error:
        taken = error.errno == errno.EADDRINUSE
        console.print(f"Cannot listen on {host}:{port}: " + (
            "the port is in use (another fluxhost?). Stop it, or choose another with FLUXHOST_PORT or --port."
            if taken else f"{error.strerror or error}."), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _exit_quietly(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


@app.command()
def worker(
    model: Annotated[list[str] | None, typer.Option(help="A model slug to serve (repeatable); default: all.")] = None,
    device: Annotated[str | None, typer.Option(help='The device, e.g. "cuda:0"; default: the first of '
                                               "FLUXHOST_DEVICES.")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Serve this worker's Prometheus metrics at "
                                                     "http://FLUXHOST_HOST:PORT/metrics.")] = None,
) -> None:
    """Run tasks from the broker (FLUXHOST_BROKER_URL): one process per GPU, models loaded once."""
    from fluxhost.settings import Settings

    settings = Settings()
    if not settings.broker_url:
        console.print("A worker takes its tasks from a broker: set FLUXHOST_BROKER_URL (redis://...). Without "
                      "one, `fluxhost serve` runs the worker itself.", markup=False, soft_wrap=True)
        raise typer.Exit(2)
    _configure_observability(settings)
    from fluxhost.runtime.dispatch.celery import WorkerProcess

    process = _connected(WorkerProcess, settings, _served_models(settings))
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=settings.host, registry=process.runtime.metrics.registry)
    try:
        process.run(model, device)
    except ValueError as error:
        console.print(str(error), markup=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _connected_service(settings):
    """The service, or a one-line reason when its models, its database or Redis are amiss."""
    from fluxhost.service import Service

    _served_models(settings)
    return _connected(Service, settings)


def _connected(build, *args):
    """``build(*args)``, or a one-line reason when the database or Redis cannot be reached."""
    from redis.exceptions import RedisError
    from sqlalchemy.exc import OperationalError

    try:
        return build(*args)
    except (OperationalError, RedisError) as error:
        what = "the database" if isinstance(error, OperationalError) else "Redis (FLUXHOST_BROKER_URL/EVENTS_URL)"
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        console.print(f"Could not reach {what}: {reason}", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _configure_observability(settings) -> None:
    """Logs as the settings say; traces exported when OpenTelemetry is installed and asked for."""
    from fluxhost import tracing
    from fluxhost.logs import configure

    configure(settings.log_level, settings.log_format)
    tracing.configure()


@keys_app.command("create")
def keys_create(
    mode: Annotated[KeyMode, typer.Option(help="signature: HMAC-signed requests; key-only: the key alone.")]
    = KeyMode.SIGNATURE,
    name: Annotated[str | None, typer.Option(help="A name to recognise the key by.")] = None,
    project: Annotated[str | None, typer.Option(help="Project the key belongs to (default: a new one).")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object, for scripts.")] = False,
) -> None:
    """Create a key. Its secret is printed once and never again."""
    key = _key_store(_settings()).create(mode, name=name, project=project)
    if as_json:
        typer.echo(json.dumps({
            "id": key.key_id, "project": key.project, "name": key.name, "mode": key.mode.value,
            "api_key": key.api_key, "api_secret": key.api_secret, "webhook_secret": key.webhook_secret,
        }))
        return
    console.print(f"Created {key.mode.value} key {key.name!r} in project {key.project!r}.", highlight=False)
    console.print(f"  api key:        {key.api_key}\n  api secret:     {key.api_secret}\n"
                  f"  webhook secret: {key.webhook_secret}", highlight=False)
    console.print("The secrets are shown only now: store them safely.")


@keys_app.command("list")
def keys_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every key, without its secret."""
    keys = _key_store(_settings()).list()
    if as_json:
        typer.echo(json.dumps([
            {"id": k.key_id, "project": k.project, "name": k.name, "mode": k.mode.value,
             "prefix": k.prefix, "created_at": k.created_at, "revoked": k.revoked} for k in keys
        ]))
        return
    table = Table("id", "key", "name", "project", "mode", "state")
    for k in keys:
        table.add_row(str(k.key_id), f"{k.prefix}…", k.name, k.project, k.mode.value,
                      "revoked" if k.revoked else "active")
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="The key's id, its first 8 characters, or the key.")]) -> None:
    """Revoke a key: requests with it are refused from now on."""
    if not _key_store(_settings()).revoke(key):
        console.print(f"No single active key matches {key!r}.")
        raise typer.Exit(1)
    console.print("Revoked.")


@models_app.command("build-tiny")
def models_build_tiny(
    folder: Annotated[Path, typer.Argument(help="Where to write the pipeline.")],
    family: Annotated[str, typer.Option(help="flux1 (FluxPipeline), klein (Flux2KleinPipeline) or "
                                             "preview-decoder (AutoencoderTiny).")] = "flux1",
) -> None:
    """Write a tiny random-weight model (draws noise) that loads like real weights."""
    from fluxhost.testing.tiny import TINY_BUILDERS, ensure_tiny_pipeline

    if family not in TINY_BUILDERS:
        console.print(f"Unknown family {family!r}: choose from {', '.join(TINY_BUILDERS)}.", highlight=False)
        raise typer.Exit(2)
    ensure_tiny_pipeline(folder, family)
    console.print(f"Tiny {family} model in {folder}. Serve it with "
                  f'FLUXHOST_MODELS=\'{{"{DEFAULT_MODEL}": {{"weights": "{folder}"}}}}\'', highlight=False)


@models_app.command("train-demo")
def models_train_demo(
    folder: Annotated[Path | None, typer.Argument(help="Where to write the model; default: the package's own "
                                                      "demo model, replaced.")] = None,
) -> None:
    """Train the demo model from scratch on this machine's CPU, from a fixed seed (about 52 minutes
    on a 2-core Intel Xeon, longer on slower CPUs): the same recipe as the weights shipped in the package."""
    spin_while_waiting()
    from fluxhost.demo import WEIGHTS
    from fluxhost.demo.train import train

    target = folder or WEIGHTS
    train(target, report=lambda line: console.print(line, highlight=False))
    console.print(f"Demo model written to {target}.", highlight=False)


@models_app.command("list")
def models_list() -> None:
    """The models this configuration serves, and the presets it could."""
    from fluxhost.demo import serves_demo
    from fluxhost.models import PRESETS

    settings = _settings()
    table = Table("slug", "weights", "device", "dtype", "steps", "guidance", "batch")
    for slug, model in _served_models(settings).items():
        table.add_row(slug, "(demo model)" if serves_demo(model) else model.weights, model.device, model.dtype,
                      str(model.steps), str(model.guidance), str(model.max_batch))
    console.print(table)
    presets = Table("preset", "model", "slug", "weights", "download", "licence")
    for preset in PRESETS.values():
        presets.add_row(preset.name, escape(preset.title), preset.slug, preset.weights, f"~{preset.download_gb} GB",
                        preset.licence)
    console.print(presets)


@models_app.command("pull")
def models_pull(
    name: Annotated[str, typer.Argument(help="A preset (schnell, dev, klein) or a Hugging Face hub id.")],
) -> None:
    """Download a model's diffusers weights into the Hugging Face cache (HF_HOME, HF_TOKEN and
    HF_HUB_OFFLINE are honoured), with a progress bar; `serve` then loads them from there."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    from fluxhost.models import PRESETS

    preset = PRESETS.get(name.lower())
    repo = preset.weights if preset else name
    if preset:
        console.print(f"{preset.title} ({repo}, about {preset.download_gb} GB, licence: {preset.licence})",
                      markup=False, highlight=False)
    try:
        # The diffusers folders only: the repos also hold single-file checkpoints of the same weights.
        folder = huggingface_hub.snapshot_download(repo, allow_patterns=["model_index.json", "*/*"])
    except LocalEntryNotFoundError as error:
        console.print(f"Cannot download {repo}: offline mode is on (HF_HUB_OFFLINE) or the hub cannot be "
                      f"reached, and it is not in the cache ({error}).", markup=False, highlight=False)
        raise typer.Exit(1) from None
    except (HfHubHTTPError, OSError, ValueError) as error:
        console.print(f"Cannot download {repo}: {error}. Gated models need their licence accepted on the hub "
                      "and HF_TOKEN set.", markup=False, highlight=False)
        raise typer.Exit(1) from None
    console.print(f"Ready in {folder}.", highlight=False)
    if preset:
        console.print(f"Serve it: FLUXHOST_PRESETS={preset.name} (slug {preset.slug}) or "
                      f"FLUXHOST_FLUX_PRO_MODEL={preset.name} (behind {DEFAULT_MODEL}).", highlight=False)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Bring the database (FLUXHOST_DATABASE_URL) to the newest schema. Every start does this too;
    run it first when several processes share a PostgreSQL database."""
    settings = _settings()
    _database(settings)
    console.print(f"Schema up to date: {settings.resolved_database_url.split('@')[-1]}", highlight=False)


@callbacks_app.command("list")
def callbacks_list(
    task: Annotated[int | None, typer.Option(help="Only the callback of this task id.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Callback deliveries, newest first, with every attempt."""
    from datetime import datetime

    from fluxhost.store.deliveries import Deliveries

    found = Deliveries(_database(_settings())).list(task_id=task, limit=limit)
    if as_json:
        typer.echo(json.dumps(found))
        return
    table = Table("task", "url", "status", "attempts", "last answer", "next attempt")
    for delivery in found:
        last = delivery["history"][-1] if delivery["history"] else None
        answer = (str(last["status_code"] or "") + " " + last["error"]).strip() if last else ""
        upcoming = delivery["next_attempt_at"]
        table.add_row(str(delivery["task_id"]), delivery["url"], delivery["status"], str(delivery["attempts"]),
                      answer, datetime.fromtimestamp(upcoming).strftime("%H:%M:%S") if upcoming else "")
    console.print(table)
