"""``fluxhost mcp``: a Model Context Protocol server (stdio) that lets an LLM agent generate images
on a fluxhost server, follow, cancel and kill its tasks, and see the models and their inputs.

It is a client of the server like ``fluxhost run``: it speaks the hosted protocol through the SDK
(:class:`~fluxhost.client.AsyncClient`), with the same credentials (``--server``,
``FLUXHOST_API_KEY``/``FLUXHOST_API_SECRET`` or the saved login), and needs no torch: ``pip install
'mcp>=2'`` (the ``mcp`` extra). An agent's configuration needs one entry: ``fluxhost mcp --server URL``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
from mcp.server.mcpserver import Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from fluxhost import DEFAULT_MODEL
from fluxhost.client import AsyncClient, AsyncTask, FluxhostError, TaskInfo, WaitTimeout

T = TypeVar("T")

IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg"}


def summary(info: TaskInfo) -> str:
    """A task in a few lines an agent can read: its id, status, seed, image URLs or reason."""
    facts: dict[str, Any] = {"task": info.id, "status": info.status, "seed": info.seed}
    if info.ended:
        facts["succeeded"] = info.succeeded
    if info.outputs:
        facts["images"] = [output.url for output in info.outputs]
    if info.debugerror:
        facts["reason"] = info.debugerror
    return json.dumps(facts)


def told_to_agent(tool: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """A tool whose refusals (unknown task, bad input, unreachable server) reach the agent in the
    server's words, rather than as a bare "error executing tool"."""

    @functools.wraps(tool)
    async def told(*args: Any, **kwargs: Any) -> T:
        try:
            return await tool(*args, **kwargs)
        except FluxhostError as error:
            raise ToolError(str(error)) from None

    return told


class StrictMCPServer(MCPServer):
    """Refuses a tool call's arguments that the tool does not have, naming the ones it has: the SDK
    would drop them silently (an agent's ``aspectRatio`` for ``aspect_ratio`` drew a square)."""

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        tool = next((tool for tool in await self.list_tools() if tool.name == name), None)
        if tool is not None:
            known = list(tool.input_schema.get("properties", {}))
            unknown = [argument for argument in arguments if argument not in known]
            if unknown:
                raise ToolError(f"{name} has no argument {unknown[0]!r}: its arguments are {', '.join(known)}"
                                + (" (a model's other inputs go in `inputs`, by the names list_models shows)"
                                   if "inputs" in known else ""))
        return await super().call_tool(name, arguments, context)


def create_mcp_server(client: AsyncClient) -> MCPServer:
    server = StrictMCPServer("fluxhost", instructions="Generate images with FLUX on a fluxhost server. "
                             "generate_image waits for the image and returns it with its URL; list_models shows the "
                             "models and their inputs.")

    async def images_of(info: TaskInfo) -> list[Image]:
        images = []
        async with httpx.AsyncClient(timeout=30) as http:
            for output in info.outputs:
                if output.contenttype in IMAGE_FORMATS:
                    answer = await http.get(output.url)
                    answer.raise_for_status()
                    images.append(Image(data=answer.content, format=IMAGE_FORMATS[output.contenttype]))
        return images

    async def finished(task: AsyncTask, wait_seconds: float) -> list[str | Image]:
        try:
            info = await client.wait(task, timeout=wait_seconds)
        except WaitTimeout:
            info = await task.detail()
            return [summary(info) + "\nStill running: call wait_for_task with this task id."]
        return [summary(info), *(await images_of(info))]

    @server.tool()
    @told_to_agent
    async def generate_image(prompt: str, model: str = DEFAULT_MODEL, aspect_ratio: str = "1:1",
                             seed: int | None = None, output_format: str = "png",
                             inputs: dict[str, str | int | float | bool] | None = None,
                             wait_seconds: float = 300) -> list[str | Image]:
        """Generate an image from a text prompt; waits for it (up to wait_seconds) and returns it
        with its URL and seed. aspect_ratio: 1:1, 16:9, 9:16, 4:3, 3:4, 3:2, 2:3, 21:9...;
        output_format: png or jpeg; the same seed and inputs give the same image. inputs: any other
        input of the model by its own name, as list_models shows it (e.g. {"steps": 28,
        "safetyTolerance": 2}); they win over the arguments above."""
        given: dict[str, Any] = {"prompt": prompt, "aspectRatio": aspect_ratio, "outputFormat": output_format}
        if seed is not None:
            given["seed"] = str(seed)
        for name, value in (inputs or {}).items():
            given[name] = str(value).lower() if isinstance(value, bool) else str(value)
        task = await client.run(model, **given)
        return await finished(task, wait_seconds)

    @server.tool()
    @told_to_agent
    async def get_task(task: str) -> str:
        """A task's status, seed, image URLs or failure reason, by task id or socket token."""
        return summary(await client.detail(task))

    @server.tool()
    @told_to_agent
    async def wait_for_task(task: str, wait_seconds: float = 300) -> list[str | Image]:
        """Wait (up to wait_seconds) for a task to end; returns its summary and images."""
        info = await client.detail(task)
        return await finished(AsyncTask(client, info.id, info.socketaccesstoken), wait_seconds)

    @server.tool()
    @told_to_agent
    async def cancel_task(task: str) -> str:
        """Cancel a task that is still queued."""
        return summary(await client.cancel(task))

    @server.tool()
    @told_to_agent
    async def kill_task(task: str) -> str:
        """Stop a running task."""
        return summary(await client.kill(task))

    @server.tool()
    @told_to_agent
    async def list_models() -> str:
        """The models this server serves, each with its inputs (id, type, default, options)."""
        models = []
        for tool in await client.tools():
            slug = f"{tool['slugowner']}/{tool['slugproject']}"
            detail = await client.tool(slug)
            inputs = [{key: item[key] for key in ("id", "type", "default", "required", "description", "options",
                                                    "min", "max") if key in item}
                      for group in detail["parameters"] for item in group["items"]]
            models.append({"model": slug, "title": tool["title"], "description": tool["description"],
                           "inputs": inputs})
        return json.dumps(models)

    return server


def serve_stdio(base_url: str, api_key: str, api_secret: str | None) -> None:
    """Serve MCP on stdin/stdout until the agent closes them (a refused call is reported to the
    agent as that tool call's error, with the server's message)."""
    create_mcp_server(AsyncClient(base_url, api_key, api_secret)).run("stdio")
