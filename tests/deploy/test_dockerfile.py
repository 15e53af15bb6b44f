"""The Dockerfile, read as Docker would (no docker engine here): its base is Ray's image for the Ray
and Python we pin, it ends as a non-root user, it installs the pinned dependencies before the source,
and the build context leaves out virtualenvs, results and VCS data."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def pinned(package: str) -> str:
    """The ==version pyproject.toml pins for a dependency."""
    for requirement in PYPROJECT["project"]["dependencies"]:
        match = re.fullmatch(rf"{re.escape(package)}(\[[^\]]*\])?==([\w.]+)", requirement.split(";")[0].strip())
        if match:
            return match.group(2)
    raise AssertionError(f"pyproject.toml pins no {package}==X")


def test_the_base_is_rays_image_for_the_pinned_ray_and_python():
    froms = [args for word, args in instructions() if word == "FROM"]
    assert len(froms) == 1, "one stage: the image is Ray's plus our packages"
    image, _, tag = froms[0].partition(":")
    assert image == "rayproject/ray"
    match = re.fullmatch(r"(\d+\.\d+\.\d+)-py(\d)(\d+)-(cu\d+|gpu|cpu)", tag)
    assert match, f"tag {tag!r} is not <ray version>-py<XY>-<cuda>"
    ray_version, major, minor, _ = match.groups()
    assert ray_version == pinned("ray")
    requires = PYPROJECT["project"]["requires-python"]  # ">=3.11,<3.12": exactly one minor
    assert re.fullmatch(rf">={major}\.{minor},<{major}\.{int(minor) + 1}", requires), requires


def test_the_image_ends_as_a_non_root_user():
    users = [args for word, args in instructions() if word == "USER"]
    assert users, "no USER: the image would run as the base image's user, unchecked"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    # Numeric, so Kubernetes' runAsNonRoot can verify it without a runAsUser.
    assert user.isdigit()


def test_dependencies_come_from_pyproject_before_the_source_is_copied():
    steps = instructions()
    copies = [i for i, (word, args) in enumerate(steps) if word == "COPY"]
    installs = [i for i, (word, args) in enumerate(steps) if word == "RUN" and "pip install" in args]
    first_source = next(i for i in copies if re.search(r"\b(service|trainer)\b", steps[i][1]))
    deps = [i for i in installs if i < first_source]
    assert deps, "dependencies must be installed before the source is copied (layer caching)"
    assert "pyproject.toml" in steps[copies[0]][1] and copies[0] < deps[0]
    assert "tomllib" in steps[deps[0]][1]  # the pins are pyproject.toml's own, not a second list
    assert any("--no-deps ." in steps[i][1] for i in installs if i > first_source)
    text = (REPO / "Dockerfile").read_text()
    for secret in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "TOKEN"):
        assert secret not in text, f"the image must not carry {secret}"


def test_dockerignore_keeps_environments_results_and_git_out_of_the_context():
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, p) or path.startswith(p.rstrip("/") + "/") for p in patterns)

    for path in (".venv", ".venv/bin/python", "runs", "runs/quickstart/summary.json", ".git", ".git/config"):
        assert ignored(path), f"{path} would be sent to the docker daemon"
    for path in ("pyproject.toml", "README.md", "service/control/rayjob.py", "trainer/loop.py", "sweeps/quickstart.yaml"):
        assert not ignored(path), f"{path} is needed by the build"
