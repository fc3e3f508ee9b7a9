"""A content-addressed store of exported ONNX graphs, on when `WAN22_ONNX_CACHE` names a folder.

Tracing a graph takes minutes at full size; a re-export whose inputs are all unchanged copies the stored graph
instead. The key covers everything the graph depends on: the module's class, its configs and every weight's bytes,
the component declaration, opset and sample sizes, the versions of torch, onnx, onnxscript and diffusers, and this
project's export code (any change to it is a new key). Entries are written whole or not at all; an export of a key
that another process is making waits for it rather than tracing the same graph twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import onnx
import torch
from torch import nn

ONNX_CACHE_ENV = "WAN22_ONNX_CACHE"
GRAPH = "graph.onnx"
_VERSIONED = ("torch", "onnx", "onnxscript", "diffusers")
_ROOT = Path(__file__).resolve().parents[1]
_CODE = ("export", "wan22_triton")  # the packages whose code shapes a graph


def from_environment() -> "OnnxCache | None":
    folder = os.environ.get(ONNX_CACHE_ENV)
    return OnnxCache(Path(folder)) if folder else None


@functools.cache  # once per process: an export asks for a key per graph
def _code_digest() -> str:
    digest = hashlib.sha256()
    for package in _CODE:
        for source in sorted((_ROOT / package).rglob("*.py")):
            digest.update(str(source.relative_to(_ROOT)).encode())
            digest.update(source.read_bytes())
    return digest.hexdigest()


def key(module: nn.Module, declaration: Any, opset: int, sizes: Mapping[str, int] | None) -> str:
    """The graph's address: equal keys, equal graphs."""
    digest = hashlib.sha256()
    configs = [(name, type(m).__qualname__, {k: v for k, v in dict(m.config).items() if not k.startswith("_")})
               for name, m in module.named_modules() if hasattr(m, "config")]  # not diffusers' `_name_or_path`
    versions = {name: importlib.metadata.version(name) for name in _VERSIONED}
    described = (type(module).__qualname__, configs, declaration, opset, sorted((sizes or {}).items()), versions)
    digest.update(repr(described).encode())
    digest.update(_code_digest().encode())
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _relocate(graph: Path, data_name: str) -> None:
    """Point the graph's external-data references at `data_name` (a file beside it)."""
    model = onnx.load(str(graph), load_external_data=False)
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = data_name
    onnx.save(model, str(graph))


class OnnxCache:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @contextlib.contextmanager
    def _claimed(self, address: str) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"{address}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or its process ends
            yield

    def fetch_or_make(self, address: str, path: Path, make: Callable[[Path], None]) -> bool:
        """`path` (+ `path.data`) from the entry at `address`, made with `make(path)` and stored when missing.
        True when the graph came from the store."""
        entry = self.folder / address
        with self._claimed(address):
            if not entry.is_dir():
                make(path)
                self._store(path, entry)
                return False
        self._copy_out(entry, path)
        return True

    def _store(self, path: Path, entry: Path) -> None:
        staging = Path(tempfile.mkdtemp(dir=self.folder, prefix=f".{entry.name}-"))
        shutil.copyfile(path, staging / GRAPH)
        data = path.with_name(path.name + ".data")
        if data.exists():
            shutil.copyfile(data, staging / f"{GRAPH}.data")
            _relocate(staging / GRAPH, f"{GRAPH}.data")
        staging.rename(entry)  # whole or not at all

    @staticmethod
    def _copy_out(entry: Path, path: Path) -> None:
        shutil.copyfile(entry / GRAPH, path)
        data = entry / f"{GRAPH}.data"
        if data.exists():
            shutil.copyfile(data, path.with_name(path.name + ".data"))  # copies: onnx refuses hard-linked data
            _relocate(path, path.name + ".data")
