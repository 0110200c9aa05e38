"""Torch's OpenMP threads wait passively in fluxhost's processes (spinning ones took the cores the
work needed: bench/engine_overhead.py --model demo), unless the environment says otherwise; the
demo's training spins again, having the cores to itself."""

import os
import subprocess
import sys

import pytest


def policy_shown(program: str, given: str | None) -> str:
    """The wait policy ``program`` prints, run with ``given`` as the environment's (or none)."""
    env = {name: value for name, value in os.environ.items() if name != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    shown = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True)
    return shown.stdout.strip()


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_importing_fluxhost_sets_the_wait_policy_and_keeps_a_given_one(given, expected):
    assert policy_shown("import os, fluxhost; print(os.environ['OMP_WAIT_POLICY'])", given) == expected


@pytest.mark.parametrize(("given", "expected"), [(None, "ACTIVE"), ("PASSIVE", "PASSIVE")])
def test_training_spins_unless_the_environment_says_otherwise(given, expected):
    program = "import os, fluxhost; fluxhost.spin_while_waiting(); print(os.environ['OMP_WAIT_POLICY'])"
    assert policy_shown(program, given) == expected


def test_spinning_is_refused_once_torch_has_read_the_policy():
    program = "import sys; sys.modules['torch'] = object(); import fluxhost; fluxhost.spin_while_waiting()"
    shown = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert shown.returncode == 1 and "torch is loaded" in shown.stderr
