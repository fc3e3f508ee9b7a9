"""Finding a ``tritonserver`` binary and preparing the environment it needs.

Two ways are supported:

* ``tritonserver`` on ``PATH`` (the NGC ``tritonserver`` container): used as is,
  with its default ``--backend-directory`` (``/opt/tritonserver/backends``).
* the binary shipped in the ``nvidia-pytriton`` wheel. It needs its bundled
  shared libraries (``site-packages/nvidia_pytriton.libs``) on
  ``LD_LIBRARY_PATH`` and a backend directory whose ``python/`` folder holds
  ``libtriton_python.so``, ``triton_python_backend_utils.py`` and the
  ``triton_python_backend_stub`` built for *this* interpreter's version. The
  wheel ships one stub per Python version, so that folder is assembled once
  into a cache directory (``<sys.prefix>/triton-backends/...``).

In both cases the directory of ``sys.executable`` is put first on ``PATH``: the
Python-backend stub ignores ``PYTHONPATH`` and runs the models with the Python
environment found first on ``PATH``, so that environment (which needs
``numpy<2``) must be the one the launcher runs in, or one put before it with
``TritonServer(path_first=[...])``.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from wan22_triton.operations.locks import private_dir

BACKEND_CACHE_ENV_VAR = "WAN22_TRITON_BACKEND_CACHE"
PYTHON_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py", "triton_python_backend_stub")
_SYSTEM_LIB_DIRS = {"/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib"}


class TritonLaunchError(RuntimeError):
    """tritonserver could not be found, prepared or started."""


@dataclass(frozen=True)
class TritonInstall:
    """A ``tritonserver`` binary with the environment and arguments it needs."""

    binary: Path
    source: str  # "PATH" or "nvidia-pytriton"
    env: dict[str, str] = field(repr=False)
    args: tuple[str, ...] = ()  # install-specific flags (--backend-directory, ...)


def prepend_path(var: str, entries: Sequence[str], env: dict[str, str]) -> None:
    old = [p for p in env.get(var, "").split(os.pathsep) if p]
    env[var] = os.pathsep.join(list(entries) + [p for p in old if p not in entries])


def _pytriton_root() -> Path:
    try:
        import pytriton  # noqa: PLC0415 - optional dependency, only for the wheel case
    except ImportError as exc:
        raise TritonLaunchError(
            "tritonserver is not on PATH and the nvidia-pytriton wheel is not installed; "
            "install nvidia-pytriton or run inside the NGC tritonserver container"
        ) from exc
    return Path(pytriton.__file__).resolve().parent


def _default_cache_dir() -> Path:
    if os.environ.get(BACKEND_CACHE_ENV_VAR):
        return Path(os.environ[BACKEND_CACHE_ENV_VAR])
    prefix_cache = Path(sys.prefix) / "triton-backends"
    if os.access(prefix_cache if prefix_cache.exists() else sys.prefix, os.W_OK):
        return prefix_cache
    return private_dir() / "backends"  # not a guessable name in the shared temp folder: its stub runs as this user


def prepare_wheel_backends(cache_dir: Path | str | None = None, python_version: str | None = None) -> Path:
    """Return a backend directory for the wheel's tritonserver, building it once.

    The result contains ``python/{libtriton_python.so, triton_python_backend_utils.py,
    triton_python_backend_stub}``, the stub for ``python_version`` (default: this
    interpreter's ``major.minor``; the stub must match the interpreter). It is keyed
    by the pytriton and Python versions, built in a temporary folder and renamed into
    place, so concurrent callers and repeated calls are safe.
    """
    root = _pytriton_root() / "tritonserver"
    py_version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / py_version / "triton_python_backend_stub"
    if not stub.is_file():
        available = sorted(
            (p.name for p in (root / "python_backend_stubs").iterdir() if p.is_dir()),
            key=lambda v: tuple(int(x) for x in v.split(".") if x.isdigit()),
        )
        raise TritonLaunchError(
            f"nvidia-pytriton ships no Python-backend stub for Python {py_version} "
            f"(available: {', '.join(available) or 'none'}); use one of those interpreters"
        )
    sources = {
        "libtriton_python.so": root / "backends" / "python" / "libtriton_python.so",
        "triton_python_backend_utils.py": root / "backends" / "python" / "triton_python_backend_utils.py",
        "triton_python_backend_stub": stub,
    }
    missing = [str(p) for p in sources.values() if not p.is_file()]
    if missing:
        raise TritonLaunchError(f"nvidia-pytriton wheel is incomplete, missing: {', '.join(missing)}")

    cache = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    key = f"pytriton-{importlib.metadata.version('nvidia-pytriton')}-py{py_version}"
    backends = cache / key
    if all((backends / "python" / name).is_file() for name in PYTHON_BACKEND_FILES):
        return backends

    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache))
    try:
        staging.chmod(0o755)  # mkdtemp makes it 0700
        (staging / "python").mkdir()
        for name, src in sources.items():
            shutil.copy2(src, staging / "python" / name)
        if backends.exists():  # incomplete leftover of an interrupted build
            shutil.rmtree(backends, ignore_errors=True)
        try:
            staging.rename(backends)
        except OSError:
            if not all((backends / "python" / n).is_file() for n in PYTHON_BACKEND_FILES):
                raise  # not a lost race with a concurrent builder
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return backends


def _interpreter_lib_dir() -> str | None:
    """Directory of this interpreter's libpython, when outside the system lib dirs.

    The stub links ``libpython3.X.so.1.0``; without this, a pyenv/conda interpreter
    would get the distribution's libpython of the same minor version instead.
    """
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if not libdir or not soname or not (Path(libdir) / soname).is_file():
        return None
    resolved = os.path.realpath(libdir)
    if resolved in _SYSTEM_LIB_DIRS or resolved.startswith("/usr/lib/"):
        return None
    return libdir


def _check_numpy() -> None:
    try:
        numpy_version = importlib.metadata.version("numpy")
    except importlib.metadata.PackageNotFoundError:
        print(f"warning: numpy is not installed in {sys.prefix}; the Python backend needs it", file=sys.stderr)
        return
    if int(numpy_version.split(".")[0]) >= 2:
        print(
            f"warning: numpy {numpy_version} in {sys.prefix}; the Python-backend stub needs numpy<2",
            file=sys.stderr,
        )


def find_tritonserver(tritonserver: str | os.PathLike | None = None,
                      cache_dir: Path | str | None = None) -> TritonInstall:
    """Locate ``tritonserver`` and build the environment to run it with.

    ``tritonserver``: explicit binary (used like a PATH one); default: ``PATH``, else the wheel.
    """
    env = dict(os.environ)
    prepend_path("PATH", [str(Path(sys.executable).parent)], env)
    _check_numpy()

    explicit = tritonserver or shutil.which("tritonserver")
    if explicit:
        binary = Path(explicit)
        if not binary.is_file():
            raise TritonLaunchError(f"tritonserver binary not found: {binary}")
        return TritonInstall(binary=binary.absolute(), source="PATH", env=env)

    root = _pytriton_root()
    binary = root / "tritonserver" / "bin" / "tritonserver"
    libs = root.parent / "nvidia_pytriton.libs"
    if not binary.is_file() or not libs.is_dir():
        raise TritonLaunchError(f"nvidia-pytriton wheel has no usable tritonserver ({binary}, {libs})")
    backends = prepare_wheel_backends(cache_dir)
    lib_dirs = [d for d in (_interpreter_lib_dir(), str(libs)) if d]
    prepend_path("LD_LIBRARY_PATH", lib_dirs, env)
    args = (
        f"--backend-directory={backends}",
        f"--cache-directory={root / 'tritonserver' / 'caches'}",
    )
    return TritonInstall(binary=binary, source="nvidia-pytriton", env=env, args=args)
