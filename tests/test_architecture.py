"""The layout as a checked contract: the import-linter contracts of pyproject.toml (layers, the
runtime apart from the API, the client apart from the server, settings importing nothing, no
cycles) hold."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def test_the_import_contracts_hold():
    checked = subprocess.run([LINT_IMPORTS, "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "0 broken" in checked.stdout
