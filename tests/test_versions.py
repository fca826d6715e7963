"""One transformers version in every environment (dev.lock and the images), and it satisfies the
project's own lower bounds (pyproject.toml), which reflect what the code needs (transformers v5)."""

from __future__ import annotations

import re

import tomllib
from conftest import REPO
from packaging.requirements import Requirement
from packaging.version import Version


def _pins(path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;#]+)", line.strip())
        if m:
            out[re.sub(r"\[.*\]", "", m.group(1)).lower().replace("_", "-")] = m.group(2)
    return out


def _locks():
    files = [REPO / "requirements" / "dev.lock", *sorted((REPO / "docker").glob("requirements-*"))]
    return {f.relative_to(REPO).as_posix(): _pins(f) for f in files}


def test_one_transformers_version_everywhere():
    shared = _pins(REPO / "requirements" / "pins.txt")["transformers"]
    found = {f: p["transformers"] for f, p in _locks().items() if "transformers" in p}
    assert "requirements/dev.lock" in found and any(f.startswith("docker/") for f in found), found
    assert set(found.values()) == {shared}, f"transformers differs between environments: {found}"


def test_pins_satisfy_the_declared_lower_bounds():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    reqs = {r.name.lower(): r for r in map(Requirement, deps)}
    assert Version("4.57.1") not in reqs["transformers"].specifier, "the code needs transformers v5"
    for f, pins in _locks().items():
        for name, req in reqs.items():
            if name in pins:
                assert req.specifier.contains(Version(pins[name]).public, prereleases=True), (f, name, pins[name])
