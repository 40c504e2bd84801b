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


def test_the_build_context_is_what_the_image_copies():
    """The build context is the repository (docker/compose.yml: ``context: ..``): without a .dockerignore every build
    sent .venv (2.7 GB), .venv-triton, model_repository/ (vit_h: GBs), runs/ and data/ to the builder."""
    lines = (REPO_ROOT / "docker" / "Dockerfile").read_text().splitlines()
    copied = {source.rstrip("/") for ln in lines if ln.startswith("COPY") for source in ln.split()[1:-1]}
    ignore = [ln.strip() for ln in (REPO_ROOT / ".dockerignore").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]
    assert ignore[0] == "*"  # everything out, then what the image copies back in
    assert {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")} == copied
