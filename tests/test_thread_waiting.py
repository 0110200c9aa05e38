"""Torch's OpenMP threads wait passively in fluxhost's processes (spinning ones took the cores the
work needed: bench/engine_overhead.py --model demo), unless the environment says otherwise."""

import os
import subprocess
import sys

import pytest

PROGRAM = "import os, fluxhost; print(os.environ['OMP_WAIT_POLICY'])"


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_importing_fluxhost_sets_the_wait_policy_and_keeps_a_given_one(given, expected):
    env = {name: value for name, value in os.environ.items() if name != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    shown = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == expected
