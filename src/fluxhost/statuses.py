"""Task statuses, the order a task walks through them, and how a task came out (no I/O here)."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """The protocol's task statuses, in lifecycle order."""

    QUEUE = "task_queue"  # stored, waiting for a worker
    ACCEPT = "task_accept"  # a worker claimed it
    PREPROCESS_START = "task_preprocess_start"  # inputs being prepared (seed, prompt)
    PREPROCESS_END = "task_preprocess_end"  # inputs ready
    ASSIGN = "task_assign"  # handed to a loaded engine
    START = "task_start"  # denoising running
    OUTPUT = "task_output"  # event only: progress or a log line while running
    OUTPUT_FULL = "task_output_full"  # event only: the whole log once the generation is over
    ERROR_FULL = "task_error_full"  # event only: the whole error text of a failed run
    END = "task_end"  # denoising done
    POSTPROCESS_START = "task_postprocess_start"  # encoding and storing files
    POSTPROCESS_END = "task_postprocess_end"  # terminal: done or failed (see pexit)
    CANCEL = "task_cancel"  # terminal: cancelled while queued or killed while running
    ERROR = "task_error"  # terminal in tasks stored before every failure ended in task_postprocess_end


class Outcome(StrEnum):
    """How an ended task came out, stored with it; each door says it in its own words (the hosted
    protocol's ``pexit``, BFL's statuses, OpenAI's error codes)."""

    COMPLETED = "completed"  # its images are stored
    FAILED = "failed"  # an error ended it (debugerror says which)
    MODERATED = "moderated"  # moderation refused its prompt or an image it made (debugerror says why)
    STOPPED = "stopped"  # Cancel or Kill ended it


TERMINAL = frozenset({Status.POSTPROCESS_END, Status.CANCEL, Status.ERROR})

# The statuses a worker moves a task through, in order; each may only follow the one before it.
WORKER_PATH = (
    Status.QUEUE,
    Status.ACCEPT,
    Status.PREPROCESS_START,
    Status.PREPROCESS_END,
    Status.ASSIGN,
    Status.START,
    Status.END,
    Status.POSTPROCESS_START,
    Status.POSTPROCESS_END,
)

# Claimed by a worker and not yet finished: these are what a crash can leave behind.
RUNNING = frozenset(WORKER_PATH[1:-1])


def stages(first: Status, last: Status) -> tuple[Status, ...]:
    """The statuses of the worker path from ``first`` to ``last``, both included."""
    return WORKER_PATH[WORKER_PATH.index(first) : WORKER_PATH.index(last) + 1]


def previous_status(status: Status) -> Status:
    """The status a task must hold for a worker to move it to ``status``."""
    index = WORKER_PATH.index(status)
    if index == 0:
        raise ValueError(f"{status} starts the lifecycle")
    return WORKER_PATH[index - 1]


# Events that carry text rather than a change of status: never coalesced, never out of order.
LOG_EVENTS = frozenset({Status.OUTPUT_FULL, Status.ERROR_FULL})

# Cancel takes only a task no worker has claimed; Kill takes any task that has not ended.
CANCELLABLE = frozenset({Status.QUEUE})
KILLABLE = frozenset({Status.QUEUE, *RUNNING})
UNFINISHED = KILLABLE  # queued or running: what limits and the queue-depth gauge count
