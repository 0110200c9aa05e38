"""The hosted protocol (Wiro's task API) as fluxhost speaks it: the door at ``/v1``, the task
socket, rendering tasks and tools, the Run input schema, and every wire string in :mod:`messages`."""
