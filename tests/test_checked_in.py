"""The checked-in generated files are what generates them, run fresh now: `model_repository/` (the export's defaults on
the tiny checkpoint: each model's config.pbtxt and model.py; weights and copied checkpoint folders git-ignored) and
the Kubernetes manifests under docker/kubernetes/ (the default render: cluster/ and one folder per tier, each with
the Kustomization that `kubectl apply -k` reads beside the YAML that `kubectl apply -f` reads)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from export.options import ExportOptions

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = "model_repository"
K8S = ROOT / "docker" / "kubernetes"
sys.path.insert(0, str(K8S))

import render  # noqa: E402  (docker/kubernetes/render.py)
from wan22_k8s.values import TIERS  # noqa: E402


def _files(folder: Path) -> dict[str, Path]:
    """Every file under `folder`, by its path relative to it."""
    return {path.relative_to(folder).as_posix(): path for path in sorted(folder.rglob("*")) if path.is_file()}


def _git(*args: str, stdin: str | None = None) -> list[str]:
    result = subprocess.run(["git", *args], cwd=ROOT, input=stdin, capture_output=True, text=True)
    assert result.returncode in (0, 1), f"git {' '.join(args)}: {result.stderr}"  # check-ignore: 1 = none ignored
    return result.stdout.splitlines()


def _ignored(paths: list[str]) -> set[str]:
    return set(_git("check-ignore", "--stdin", stdin="\n".join(paths))) if paths else set()


def _differences(fresh: dict[str, Path], checked_in: Path, names: set[str]) -> list[str]:
    return [f"{'differs' if (checked_in / name).is_file() else 'missing'}: {name}" for name in sorted(names)
            if not (checked_in / name).is_file() or (checked_in / name).read_bytes() != fresh[name].read_bytes()]


def test_model_repository_is_the_tiny_checkpoints_export(tiny_checkpoint, tmp_path):
    from export.__main__ import main as export_main

    fresh_repository = tmp_path / REPOSITORY
    export_main(["--checkpoint", str(tiny_checkpoint), "--repository", str(fresh_repository)])  # no flag: defaults
    fresh = _files(fresh_repository)
    tracked = {path.removeprefix(f"{REPOSITORY}/") for path in _git("ls-files", "--", REPOSITORY)}
    ignored = {path.removeprefix(f"{REPOSITORY}/") for path in _ignored([f"{REPOSITORY}/{name}" for name in fresh])}
    problems = _differences(fresh, ROOT / REPOSITORY, tracked & set(fresh))
    problems += [f"not exported: {name}" for name in sorted(tracked - set(fresh))]
    problems += [f"neither checked in nor git-ignored: {name}" for name in sorted(set(fresh) - tracked - ignored)]
    assert not problems, f"{'; '.join(problems)}: run `make model-repository` and commit {REPOSITORY}/"

    # Each model's config and entry point, as text a newcomer reads, no machine's paths in them; weights ignored.
    models = {name.split("/")[0] for name in fresh}
    assert {f"{model}/config.pbtxt" for model in models} | {f"{model}/1/model.py" for model in models} <= tracked
    assert any(name.endswith(".safetensors") for name in ignored)
    for name in tracked:
        text = fresh[name].read_text(encoding="utf-8")
        assert str(tiny_checkpoint) not in text and str(tmp_path) not in text, f"{name} names a path of this machine"


def test_loading_the_checked_in_configs_alone_says_to_export(tmp_path):
    """A fresh clone's model_repository/ has no weights: a model's load says to export (not a Hub download)."""
    from export.model_config import read_manifest
    from wan22_triton.engines.loading import load_component

    manifest = read_manifest(ROOT / REPOSITORY / "vae_decoder")  # a checked-in manifest reads back
    with pytest.raises(FileNotFoundError, match="make export"):
        load_component(manifest, tmp_path, object, "vae", "vae", "cpu")


def test_make_export_writes_the_checked_in_repository():
    """`make export` without arguments: the tiny checkpoint, the export's default options, into model_repository/;
    `make model-repository` runs the export the way the test above does."""
    makefile = (ROOT / "Makefile").read_text()
    defaults = dict(re.findall(r"^(\w+) \?= (\S+)$", makefile, flags=re.M))
    tiny = re.search(r"^TINY := (\S+)$", makefile, flags=re.M)[1]
    options = ExportOptions()
    assert (defaults["CHECKPOINT"], defaults["REPOSITORY"]) == (tiny, REPOSITORY)
    assert [defaults[k] for k in ("ENGINE", "DEVICE", "PRECISION")] == [
        str(options.engine), str(options.device), str(options.precision)]
    assert f"\t$(PY) -m export --checkpoint $(TINY) --repository {REPOSITORY}\n" in makefile


def test_kubernetes_manifests_are_the_default_render(tmp_path):
    render.main(["--out", str(tmp_path)])
    fresh = _files(tmp_path)
    groups = {name.split("/")[0] for name in fresh if "/" in name}
    checked_in = {name for name in _files(K8S) if name.split("/")[0] in groups}
    problems = _differences(fresh, K8S, set(fresh))
    problems += [f"not rendered: {name}" for name in sorted(checked_in - set(fresh))]
    problems += [f"not rendered: {path.parent.name}/" for path in K8S.glob(f"*/{render.KUSTOMIZATION}")
                 if path.parent.name not in groups]
    folder = K8S.relative_to(ROOT).as_posix()
    problems += [f"git-ignored: {name}" for name in sorted(_ignored([f"{folder}/{name}" for name in fresh]))]
    assert not problems, f"{'; '.join(problems)}: run `make kubernetes` and commit {folder}/"


def test_kubectl_apply_k_and_f_take_the_same_files():
    """`kubectl apply -k <folder>` applies what its Kustomization lists, `-f <folder>` every .yaml in it."""
    folders = [path.parent for path in K8S.glob(f"*/{render.KUSTOMIZATION}")]
    assert {folder.name for folder in folders} == {"cluster", *TIERS}
    for folder in folders:
        [kustomization] = yaml.safe_load_all((folder / render.KUSTOMIZATION).read_text())
        assert kustomization["kind"] == "Kustomization"
        assert kustomization["resources"] == sorted(path.name for path in folder.iterdir()
                                                    if path.suffix in (".yaml", ".yml", ".json")), folder
