"""Callbacks: a signed POST of the task's Task/Detail answer to the ``callbackUrl`` given at Run.

:mod:`.poster` makes one signed HTTP attempt; :mod:`.sender` decides when attempts happen (due
deliveries from the database, exponential backoff with jitter, given up after a bound). The
deliveries themselves live in :mod:`fluxhost.store.deliveries`.
"""
