"""The client side: the Python SDK (:mod:`fluxhost.client.sdk`, re-exported here), the
``fluxhost run/tasks/...`` commands and the MCP server. It needs only the client install's
packages: nothing here imports the server."""

from fluxhost.client.sdk import (
    DEFAULT_SERVER,
    AsyncClient,
    AsyncTask,
    AuthenticationError,
    Client,
    FluxhostError,
    NonceSource,
    Output,
    Progress,
    ProtocolError,
    RunResult,
    ServerUnavailable,
    Task,
    TaskInfo,
    WaitTimeout,
)

__all__ = [
    "DEFAULT_SERVER", "AsyncClient", "AsyncTask", "AuthenticationError", "Client", "FluxhostError", "NonceSource",
    "Output", "Progress", "ProtocolError", "RunResult", "ServerUnavailable", "Task", "TaskInfo", "WaitTimeout",
]
