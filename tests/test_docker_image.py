"""docker/Dockerfile installs the versions the tests ran with (requirements.lock), not whatever is newest."""

from __future__ import annotations

import re

import tomllib

from tests.conftest import REPO_ROOT


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_the_image_installs_with_the_lock_as_constraints():
    lines = (REPO_ROOT / "docker" / "Dockerfile").read_text().splitlines()
    copies = " ".join(ln for ln in lines if ln.startswith("COPY"))
    (install,) = [ln for ln in lines if ln.startswith("RUN") and "pip install" in ln]
    assert "requirements.lock" in copies and "-c requirements.lock" in install
    extras = re.search(r'"\.\[([a-z,]+)\]"', install).group(1).split(",")
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    wanted |= {_name(r) for extra in extras for r in project["optional-dependencies"][extra]}
    pinned = {_name(ln) for ln in (REPO_ROOT / "requirements.lock").read_text().splitlines() if "==" in ln}
    assert wanted <= pinned, f"not pinned in requirements.lock: {sorted(wanted - pinned)}"
