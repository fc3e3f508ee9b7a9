"""Find perf_analyzer (tritonclient wheel or NGC SDK container) and the environment it needs.

The binary in the ``tritonclient[all]`` wheel (``<venv>/bin/perf_analyzer``) links
``libcudart.so.12`` and ``libb64.so.0d`` but ships neither:

* ``libcudart.so.12`` comes from the ``nvidia-cuda-runtime-cu12`` wheel
  (``site-packages/nvidia/cuda_runtime/lib``), put on ``LD_LIBRARY_PATH`` here;
* ``libb64.so.0d`` comes from Debian/Ubuntu ``libb64-0d`` (``apt-get install -y libb64-0d``).

If either is still missing, the copies bundled (under hashed names) in
``site-packages/nvidia_pytriton.libs`` are exposed through symlinks in a small
shim directory.

Use from Python::

    from perf_analyzer_env import perf_analyzer_command   # with perf/ on sys.path
    cmd, env = perf_analyzer_command()
    subprocess.run([*cmd, "-m", "add_sub", "-u", "localhost:8001", "-i", "grpc"], env=env)

or from shell scripts::

    python perf/perf_analyzer_env.py -m add_sub -u localhost:8001 -i grpc ...   # exec's perf_analyzer
    eval "$(python perf/perf_analyzer_env.py --print-env)"; "$PERF_ANALYZER" -m add_sub ...
    python perf/perf_analyzer_env.py --check     # exit 1 with the missing libraries
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

# soname perf_analyzer links -> glob of the copy bundled in nvidia_pytriton.libs
_BUNDLED_FALLBACKS = {"libb64.so.0d": "libb64-*.so.0d", "libcudart.so.12": "libcudart-*.so.12*"}


def find_perf_analyzer() -> Path:
    """perf_analyzer next to this interpreter (tritonclient wheel), else on PATH (SDK container)."""
    for candidate in (Path(sysconfig.get_path("scripts")) / "perf_analyzer", Path(sys.executable).parent / "perf_analyzer"):
        if candidate.is_file():
            return candidate
    found = shutil.which("perf_analyzer")
    if found:
        return Path(found)
    raise FileNotFoundError("perf_analyzer not found; pip install 'tritonclient[all]' (the wheel ships it)")


def _site_packages() -> Path:
    return Path(sysconfig.get_path("purelib"))


def _cuda_runtime_lib_dir() -> Path | None:
    lib = _site_packages() / "nvidia" / "cuda_runtime" / "lib"
    return lib if (lib / "libcudart.so.12").is_file() else None


def missing_libraries(binary: Path, env: dict[str, str]) -> list[str]:
    """Sonames that ``ldd`` reports as 'not found' for ``binary`` under ``env``."""
    out = subprocess.run(["ldd", str(binary)], env=env, capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if "not found" in line]


def _shim_dir() -> Path:
    base = Path(sys.prefix) if os.access(sys.prefix, os.W_OK) else Path(tempfile.gettempdir())
    return base / f"perf-analyzer-libs-{os.getuid()}"


def _shim_bundled(missing: list[str]) -> Path | None:
    """Symlink nvidia_pytriton.libs copies of ``missing`` sonames into a shim dir."""
    bundled = _site_packages() / "nvidia_pytriton.libs"
    links = {}
    for soname in missing:
        pattern = _BUNDLED_FALLBACKS.get(soname)
        matches = sorted(bundled.glob(pattern)) if pattern and bundled.is_dir() else []
        if matches:
            links[soname] = matches[0]
    if not links:
        return None
    shim = _shim_dir()
    shim.mkdir(parents=True, exist_ok=True)
    for soname, target in links.items():
        link = shim / soname
        if link.is_symlink() or link.exists():
            if link.resolve() == target.resolve():
                continue
            link.unlink()
        link.symlink_to(target)
    return shim


def perf_analyzer_command(base_env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """``([perf_analyzer], env)`` ready for subprocess; env has the library dirs it needs."""
    binary = find_perf_analyzer()
    env = dict(os.environ if base_env is None else base_env)
    extra = [str(d) for d in (_cuda_runtime_lib_dir(),) if d]
    missing = missing_libraries(binary, _with_lib_dirs(env, extra))
    shim = _shim_bundled(missing) if missing else None
    if shim:
        extra.append(str(shim))
    return [str(binary)], _with_lib_dirs(env, extra)


def _with_lib_dirs(env: dict[str, str], dirs: list[str]) -> dict[str, str]:
    env = dict(env)
    old = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p not in dirs]
    if dirs or old:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(dirs + old)
    return env


def check() -> list[str]:
    """Missing libraries after all fallbacks (empty when perf_analyzer can run)."""
    cmd, env = perf_analyzer_command()
    return missing_libraries(Path(cmd[0]), env)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--print-env"]:
        cmd, env = perf_analyzer_command()
        print(f"export PERF_ANALYZER={shlex.quote(cmd[0])}")
        print(f"export LD_LIBRARY_PATH={shlex.quote(env.get('LD_LIBRARY_PATH', ''))}")
        return 0
    if argv[:1] == ["--check"]:
        missing = check()
        if missing:
            hint = " (apt-get install -y libb64-0d)" if "libb64.so.0d" in missing else ""
            print(f"perf_analyzer cannot run, missing: {', '.join(missing)}{hint}", file=sys.stderr)
            return 1
        print(f"perf_analyzer OK: {find_perf_analyzer()}")
        return 0
    cmd, env = perf_analyzer_command()
    os.execve(cmd[0], cmd + argv, env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
