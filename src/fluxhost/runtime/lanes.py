"""Worker lanes: where some served models train, trainings take worker threads of their own, so
that an hour of training never holds up a drawing, and a queued task wakes only the lane that
runs it (a drawing woke the training lane too: an empty claim, a write, at every Run).

A lane is the ``training`` argument of :meth:`fluxhost.runtime.worker.Worker.claim`: None takes
every task (no model trains), True only trainings, False everything else."""

from __future__ import annotations

from collections.abc import Iterable

Lane = bool | None


def lanes(kinds: Iterable[str]) -> tuple[Lane, ...]:
    """The lanes of workers serving models of these kinds."""
    return (False, True) if "train" in kinds else (None,)


def lane_of(kind: str, kinds: Iterable[str]) -> Lane:
    """The lane that runs a task of a model of ``kind``, among served models of ``kinds``."""
    return None if "train" not in kinds else kind == "train"
