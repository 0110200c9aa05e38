"""The deployment files and the README name only settings that exist, and name them all."""

import re
from pathlib import Path

import yaml

from fluxhost.settings import Settings

ROOT = Path(__file__).parent.parent
SETTINGS = {f"FLUXHOST_{name.upper()}" for name in Settings.model_fields}


def test_compose_gives_every_fluxhost_process_valid_settings():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    environment = compose["x-fluxhost"]["environment"]
    named = {name for name in environment if name.startswith("FLUXHOST_")}
    assert named <= SETTINGS, named - SETTINGS
    values = {name.removeprefix("FLUXHOST_").lower(): value for name, value in environment.items()
              if name in named and not str(value).startswith("${")}
    settings = Settings(**values)
    assert settings.storage == "s3" and settings.resolved_events_url == settings.broker_url
    services = compose["services"]
    assert services["worker-gpu0"]["command"][:2] == ["fluxhost", "worker"]
    assert all("/readyz" in " ".join(services[api]["healthcheck"]["test"]) for api in ("api-1", "api-2"))
    for api in ("api-1", "api-2"):  # behind the balancer: each client's own address is counted, not the balancer's
        assert services[api]["environment"] == {**environment, "FORWARDED_ALLOW_IPS": "*"}
        assert "ports" not in services[api]  # which only holds while nothing but the balancer reaches them


def test_the_readme_documents_every_setting():
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"FLUXHOST_[A-Z0-9_]+", readme))
    # A row may shorten its followers: `FLUXHOST_S3_BUCKET`, `_REGION` is FLUXHOST_S3_REGION too.
    for first, followers in re.findall(r"^\| `(FLUXHOST_[A-Z0-9_]+)`((?:, `_[A-Z0-9_]+`)+)", readme, re.MULTILINE):
        family = "_".join(first.split("_")[:2])
        documented |= {family + suffix for suffix in re.findall(r"`(_[A-Z0-9_]+)`", followers)}
    families = {name.removesuffix("*") for name in re.findall(r"`(FLUXHOST_[A-Z]+_)\*`", readme)}
    missing = {name for name in SETTINGS - documented if not name.startswith(tuple(families))}
    assert not missing, f"settings missing from the README: {sorted(missing)}"
