"""`--lora NAME=FILE` / `--lora NAME=HIGH,LOW`: LoRA files checked against the checkpoint's experts, then copied.

One file applies to every expert (what diffusers does when the same file is loaded with and without
`load_into_transformer_2=True`); a pair gives the high-noise expert its first file and the low-noise expert its
second (Wan2.2-Lightning ships such pairs). Each file is read exactly as the served expert will read it
(`wan22_triton.request.lora.read_lora`: diffusers' Wan loader and converters) and checked against its expert built on the
meta device from the checkpoint's config (no weights read), so a LoRA that does not fit fails the export, naming the
file, key and shapes, before anything is written. The expert's file is copied as given to `1/loras/<name>.safetensors`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from wan22_triton.checkpoint import CheckpointInfo
from wan22_triton.request.lora import check_fits, check_values, lora_path, name_problem, read_lora


@dataclass(frozen=True)
class LoraSource:
    name: str
    files: tuple[str, ...]  # one for every expert, or one per expert, high-noise first

    @classmethod
    def parse(cls, spec: str) -> LoraSource:
        """`NAME=FILE` or `NAME=HIGH,LOW` (the command line's form)."""
        name, sep, files = spec.partition("=")
        if not sep or not files:
            raise ValueError(f"--lora takes NAME=FILE or NAME=HIGH,LOW, got {spec!r}")
        return cls(name, tuple(f.strip() for f in files.split(",")))

    def check(self) -> None:
        """ValueError for a bad name or file list (the files themselves: `check_loras`)."""
        problem = name_problem(self.name)
        if problem is not None:
            raise ValueError(f"--lora name {problem}")
        if not 1 <= len(self.files) <= 2 or not all(self.files):
            raise ValueError(f"--lora {self.name}: one file for every expert or two (high-noise, low-noise), "
                             f"got {list(self.files)}")

    def file_for(self, expert_index: int) -> Path:
        return Path(self.files[expert_index if len(self.files) > 1 else 0])


def check_loras(info: CheckpointInfo, sources: tuple[LoraSource, ...], log: Callable[[str], None] = print) -> None:
    """Every source's files against the checkpoint's experts; ValueError naming the LoRA, file, key and shapes."""
    if not sources:
        return
    import torch
    from diffusers import WanTransformer3DModel

    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"--lora names must be unique, got {names}")
    for index, folder in enumerate(info.expert_folders):
        with torch.device("meta"):  # the expert's modules and shapes from its config, no weights
            expert = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(Path(info.path) / folder))
        for source in sources:
            if len(source.files) > len(info.expert_folders):
                raise ValueError(f"--lora {source.name}: {len(source.files)} files for a checkpoint with "
                                 f"{len(info.expert_folders)} expert(s)")
            path = source.file_for(index)
            state_dict, metadata = read_lora(path)
            check_fits(state_dict, expert, f"--lora {source.name} ({path}) for {folder}")
            check_values(state_dict, metadata, f"--lora {source.name} ({path})")
            log(f"  lora {source.name} for {folder}: {path} ({len(state_dict)} tensors) fits")


def expert_lora_writer(sources: tuple[LoraSource, ...], expert_index: int) -> Callable[[Path], None]:
    """Copies each source's file for this expert into the expert's version folder."""

    def write(version: Path) -> None:
        for source in sources:
            target = lora_path(version, source.name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source.file_for(expert_index), target)

    return write
