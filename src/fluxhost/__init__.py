"""fluxhost: a self-hosted FLUX text-to-image service speaking the Wiro task protocol."""

import os
import sys

__version__ = "0.1.0"

DEFAULT_MODEL = "black-forest-labs/flux-pro-1.1"
"""The hosted tool this server reproduces (the seed's), served by default."""

# Torch's OpenMP threads spin while they wait for work, by default. Beside the service's other
# threads and processes (the API, a worker child, PNG encoding) the spinning takes the cores the
# work needs: a demo picture cost the worker 12.6 CPU-seconds spinning and 2.8 waiting passively,
# on 2 cores busy with other tests (bench/engine_overhead.py --model demo). Set before torch loads
# its OpenMP runtime, which reads it once; OMP_WAIT_POLICY=ACTIVE in the environment keeps spinning.
_WAIT_POLICY_GIVEN = "OMP_WAIT_POLICY" in os.environ
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def spin_while_waiting() -> None:
    """Torch's OpenMP threads spin again, for a process that has the cores to itself (``fluxhost
    models train-demo``: its many small steps ran 10-25 % slower waiting passively). A policy the
    environment gave is kept. Call it before torch is imported: its runtime reads the policy once."""
    if "torch" in sys.modules:
        raise RuntimeError("torch is loaded: its threads' wait policy can no longer change")
    if not _WAIT_POLICY_GIVEN:
        os.environ["OMP_WAIT_POLICY"] = "ACTIVE"
