"""Every refusal the hosted protocol's door and socket send, worded as the hosted API words them
(its clients match on some of them, such as ``slug-owner-project-not-exist``)."""

from __future__ import annotations

from collections.abc import Iterable

from fluxhost.auth import AuthFailure

INVALID = "Request parameters are invalid."
UNKNOWN_MODEL = "slug-owner-project-not-exist"
NO_TASK = "There is no task yet."
TASK_NOT_EXIST = "task-not-exist"
ID_REQUIRED = "taskid or socketaccesstoken is required"
NOT_CANCELLABLE = "Task is not in a cancellable state."
NOT_KILLABLE = "Task could not be killed: it has already ended."
TASK_NOT_ENDED = "Task must be completed or cancelled before deleting files"
FILE_REQUIRED = "Request parameter [file] required: send the file as multipart form data"
FILE_ID_REQUIRED = "Request parameter [fileid] required"
NO_FILE = "There is no such file."
NO_ROOM = ("The server has no room left to store files: retry later, or ask its operator to free space "
           "on its disk.")
UPSAMPLING_UNAVAILABLE = (
    "Prompt upsampling is not available on this server: its operator can set FLUXHOST_UPSAMPLER_URL (an "
    "OpenAI-compatible API) or FLUXHOST_UPSAMPLER_LOCAL (a transformers language model). Send "
    "promptUpsampling=false to use the prompt as given."
)
DATABASE_UNAVAILABLE = "The service's database is unavailable right now (locked or unreachable): retry shortly."
BAD_URL = "Error parsing url."
POST_ONLY = "Method not allowed: every endpoint takes POST."
INTERNAL_ERROR = "Internal server error."

AUTHENTICATION = {
    AuthFailure.UNKNOWN_KEY: "Project authorization is not founded.",
    AuthFailure.SIGNATURE_REQUIRED: "Project requires signature authentication. x-signature and x-nonce headers "
                                    "are required.",
    AuthFailure.BAD_SIGNATURE: "Project authorization is not valid.",
}

# The socket's refusals of a client's frame.
FRAME_TOO_LARGE = "Frames must be JSON text of at most 4096 bytes."
FRAME_NOT_OBJECT = "Frames must be JSON objects."
FRAME_UNKNOWN = 'Unknown frame type: send {"type": "task_info", "tasktoken": "<socketaccesstoken>"}.'
FRAME_TOKEN_REQUIRED = "tasktoken is required"
# Why the socket closes a connection (close reasons: at most 123 bytes).
TOO_MANY_UNREAD = "Too many frames waiting to be read: connect again and follow your tasks anew."


def too_many_invalid_frames(per_minute: int) -> str:
    return f"Too many invalid frames: a connection may send {per_minute} a minute."


def bad_url(path: str) -> str:
    """An unknown path; one that ends with a slash is named without it, since no path has one."""
    if path.endswith("/") and path.strip("/"):
        return f"{BAD_URL} No path ends with a slash: did you mean {path.rstrip('/')}?"
    return BAD_URL


def parameter(name: str, problem: str) -> str:
    """A refused input: ``problem`` is a predicate of it ("required", "is larger than 20 MB")."""
    return f"Request parameter [{name}] {problem}"


def over_quota(quota_bytes: int, used_bytes: int, size: int) -> str:
    return (f"Request parameter [file] would take this project's uploads past their quota of {quota_bytes} bytes "
            f"({used_bytes} in use, this file {size}): delete some with File/Delete first.")


def between(name: str, low: float, high: float) -> str:
    def written(bound: float) -> str:
        return f"{bound:g}" if isinstance(bound, float) else str(bound)

    return parameter(name, f"must be between {written(low)} and {written(high)}")


def one_of(name: str, options: Iterable[str]) -> str:
    return parameter(name, f"must be one of {', '.join(options)}")


def number(name: str) -> str:
    return parameter(name, "must be integer or float")


def store_failed(action: str) -> str:
    """A file the server could not store, read or delete (``action``) in its file store."""
    return f"The server could not {action} the file right now: retry later."


def upload_in_use(task_id: int) -> str:
    return (f"The file is used by task {task_id}, which has not ended (a training's picture, or a LoRA adapter): "
            "delete it once the task ends, or kill the task first.")
