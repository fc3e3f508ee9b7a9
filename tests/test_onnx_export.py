"""ONNX export of the transformer and the VAE frame graphs, checked against PyTorch/diffusers in onnxruntime (CPU).

Every graph is exported once per session (tiny random-weight models) and run at shapes other than the export sample.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch

from export import onnx_export
from wan22_triton.components.common import ComponentSpec, Dim, TensorSpec
from wan22_triton.components.expert import TRANSFORMER_HIGH_NOISE, transformer_spec
from wan22_triton.components.vae_decoder import vae_decoder_frame_specs
from wan22_triton.checkpoint import CheckpointInfo, read_checkpoint
from wan22_triton.engines.vae_frames import (
    CACHE_LAYOUT_FILE,
    FirstFrameDecoder,
    StepDecoder,
    decode_with_frame_graphs,
    discover_cache_layout,
    named_runners,
    torch_runners,
)

ort = pytest.importorskip("onnxruntime")

# Max |onnx - torch| allowed. Observed on CPU (onnxruntime 1.32): transformer <= ~6e-6 (outputs up to ~2.5),
# VAE <= ~4e-6 (outputs in [-1, 1]).
TRANSFORMER_ATOL = 3e-5
VAE_ATOL = 1e-5


# --------------------------------------------------------------------------------------------- tiny models


def _build_directly() -> SimpleNamespace:
    """Fallback when `devtools.tiny_checkpoint` is unavailable: the same tiny shapes, built in memory."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan  # top-level names: mypy stubs
    from diffusers.models.transformers.transformer_wan import WanTransformer3DModel

    from wan22_triton.checkpoint import GENERATION_DEFAULTS, _pipeline_call_default

    torch.manual_seed(2)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    ).eval()
    torch.manual_seed(4)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                           temperal_downsample=[False, True, True]).eval()
    info = CheckpointInfo(
        path="", family="wan2.2-t2v-a14b", expert_folders=("transformer", "transformer_2"), boundary_ratio=0.875,
        num_train_timesteps=1000, in_channels=16, out_channels=16, patch_size=(1, 2, 2), text_dim=32,
        text_len=int(_pipeline_call_default("max_sequence_length")),
        num_attention_heads=int(transformer.config.num_attention_heads), z_dim=16,
        vae_scale_factor_temporal=int(vae.config.scale_factor_temporal),
        vae_scale_factor_spatial=int(vae.config.scale_factor_spatial),
        latents_mean=tuple(vae.config.latents_mean), latents_std=tuple(vae.config.latents_std),
        default_height=480, default_width=832, default_num_frames=81,
        generation=GENERATION_DEFAULTS["wan2.2-t2v-a14b"],
    )
    return SimpleNamespace(info=info, transformer=transformer, vae=vae)


@pytest.fixture(scope="session")
def tiny(request: pytest.FixtureRequest) -> SimpleNamespace:
    try:  # conftest's session fixture: `devtools.tiny_checkpoint` written into tmp_path_factory
        root = Path(request.getfixturevalue("tiny_checkpoint"))
    except Exception as exc:  # generator missing or broken: build the same shapes directly
        warnings.warn(f"tiny checkpoint unavailable ({exc!r}); building tiny models directly")
        return _build_directly()
    info = read_checkpoint(root)
    return SimpleNamespace(
        info=info,
        transformer=onnx_export.load_transformer(root / info.expert_folders[0]),
        vae=onnx_export.load_vae(root / "vae"),
    )


@pytest.fixture(scope="session")
def transformer_onnx(tiny: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    spec = transformer_spec(tiny.info, TRANSFORMER_HIGH_NOISE)
    path = onnx_export.export_transformer(tiny.transformer, spec, tmp_path_factory.mktemp("onnx") / f"{spec.name}.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return SimpleNamespace(spec=spec, path=path, session=session)


@pytest.fixture(scope="session")
def vae_onnx(tiny: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    out_dir = tmp_path_factory.mktemp("vae_onnx")
    first, step = onnx_export.export_vae_decoder_frames(tiny.vae, tiny.info, out_dir)
    layout = onnx_export.load_cache_layout(out_dir)
    first_spec, step_spec = vae_decoder_frame_specs(tiny.info, layout)
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (first, step)]
    # Both result conventions named_runners accepts: {name: array} (first) and a list in declared order (step).
    names = first_spec.output_names
    runners = named_runners(lambda feeds: dict(zip(names, sessions[0].run(names, feeds))),
                            lambda feeds: sessions[1].run(step_spec.output_names, feeds), first_spec, step_spec)
    return SimpleNamespace(dir=out_dir, paths=(first, step), specs=(first_spec, step_spec), layout=layout,
                           runners=runners)


def _dims(value: onnx.ValueInfoProto) -> tuple[int | str, ...]:
    return tuple(d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim)


def _declared_dims(t: TensorSpec) -> tuple[int | str, ...]:
    return tuple(d.label if isinstance(d, Dim) else d for d in t.shape)


def _assert_graph_matches_spec(path: Path, spec: ComponentSpec) -> None:
    onnx_export.check_graph(path)
    assert onnx_export.external_data_files(path) == {path.name + ".data"}
    assert sorted(p.name for p in path.parent.glob(path.stem + ".*")) == [path.name, path.name + ".data"]
    model = onnx.load(str(path), load_external_data=False)
    assert [v.name for v in model.graph.input] == spec.input_names
    assert [v.name for v in model.graph.output] == spec.output_names
    for value, declared in zip((*model.graph.input, *model.graph.output), (*spec.inputs, *spec.outputs)):
        assert _dims(value) == _declared_dims(declared), value.name
        assert value.type.tensor_type.elem_type == onnx.helper.np_dtype_to_tensor_dtype(np.dtype(declared.dtype))
    assert all(i.data_type != onnx.TensorProto.DOUBLE for i in model.graph.initializer)


# --------------------------------------------------------------------------------------------- VAE in torch


@pytest.mark.slow
def test_frame_decoders_equal_diffusers_decode(tiny: SimpleNamespace) -> None:
    """The two-graph loop in torch is diffusers' `vae.decode` (tiling off), frame counts 1-5, two sizes."""
    vae = tiny.vae
    assert not getattr(vae, "use_tiling", False)
    run_first, run_step = torch_runners(vae)
    gen = torch.Generator().manual_seed(0)
    for batch, h, w in ((1, 4, 6), (2, 3, 5)):
        for frames in (1, 2, 3, 5):
            z = torch.randn(batch, tiny.info.z_dim, frames, h, w, generator=gen)
            with torch.no_grad():
                ref = vae.decode(z).sample
            out = decode_with_frame_graphs(run_first, run_step, z)
            assert out.shape == ref.shape == (batch, 3, 1 + tiny.info.vae_scale_factor_temporal * (frames - 1),
                                              h * tiny.info.vae_scale_factor_spatial,
                                              w * tiny.info.vae_scale_factor_spatial)
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_frame_decoders_include_the_clamp(tiny: SimpleNamespace) -> None:
    vae = copy.deepcopy(tiny.vae)
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(50.0)  # saturate
    z = torch.randn(1, tiny.info.z_dim, 2, 3, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = vae.decode(z).sample
    assert (ref.abs() == 1).float().mean() > 0.1
    run_first, run_step = torch_runners(vae)
    torch.testing.assert_close(decode_with_frame_graphs(run_first, run_step, z), ref, atol=1e-5, rtol=0)


def test_frame_decoder_shapes_follow_the_declaration(tiny: SimpleNamespace) -> None:
    layout = discover_cache_layout(tiny.vae)
    first_spec, step_spec = vae_decoder_frame_specs(tiny.info, layout)
    sizes = {"batch": 2, "latent_height": 3, "latent_width": 5}
    first, step = FirstFrameDecoder(tiny.vae, layout), StepDecoder(tiny.vae, layout)
    with torch.no_grad():
        outs = first(*[torch.from_numpy(a) for a in first_spec.sample_inputs(sizes).values()])
        assert [tuple(o.shape) for o in outs] == [t.resolve(sizes) for t in first_spec.outputs]
        inputs = step_spec.sample_inputs(sizes)
        outs = step(*[torch.from_numpy(inputs[n]) for n in step_spec.input_names])
        assert [tuple(o.shape) for o in outs] == [t.resolve(sizes) for t in step_spec.outputs]


# --------------------------------------------------------------------------------------------- transformer ONNX


@pytest.mark.slow
def test_transformer_graph(transformer_onnx: SimpleNamespace, tiny: SimpleNamespace) -> None:
    _assert_graph_matches_spec(transformer_onnx.path, transformer_onnx.spec)
    ops = onnx_export.op_histogram(transformer_onnx.path)
    # F.scaled_dot_product_attention at opset 18: MatMul(Q*s, K^T*s) -> Softmax -> MatMul, per attention.
    assert ops["Softmax"] == 2 * tiny.transformer.config.num_layers
    assert "ScatterND" not in ops  # RoPE exported without strided in-place writes
    # The export patches are undone: the model keeps diffusers' processors.
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    assert all(isinstance(b.attn1.processor, WanAttnProcessor) for b in tiny.transformer.blocks)


@pytest.mark.parametrize(
    "sizes",
    [
        {"batch": 1, "latent_frames": 1, "latent_height": 2, "latent_width": 4},
        {"batch": 2, "latent_frames": 3, "latent_height": 6, "latent_width": 2},
        {"batch": 2, "latent_frames": 5, "latent_height": 4, "latent_width": 4},
        {"batch": 1, "latent_frames": 5, "latent_height": 8, "latent_width": 10},
    ],
    ids=lambda s: "b{batch}-f{latent_frames}-{latent_height}x{latent_width}".format(**s),
)
@pytest.mark.slow
def test_transformer_onnx_matches_torch(transformer_onnx: SimpleNamespace, tiny: SimpleNamespace,
                                        sizes: dict[str, int]) -> None:
    spec = transformer_onnx.spec
    assert sizes != onnx_export.export_sizes(spec)
    feeds = spec.sample_inputs(sizes, seed=sizes["latent_frames"])
    with torch.no_grad():
        ref = tiny.transformer(*[torch.from_numpy(feeds[n]) for n in spec.input_names], return_dict=False)[0].numpy()
    (out,) = transformer_onnx.session.run(spec.output_names, feeds)
    assert out.shape == spec.outputs[0].resolve(sizes)
    np.testing.assert_allclose(out, ref, atol=TRANSFORMER_ATOL, rtol=0)


# --------------------------------------------------------------------------------------------- VAE ONNX


@pytest.mark.slow
def test_vae_frame_graphs(vae_onnx: SimpleNamespace, tiny: SimpleNamespace) -> None:
    for path, spec in zip(vae_onnx.paths, vae_onnx.specs):
        assert path.name == f"{spec.name}.onnx"
        _assert_graph_matches_spec(path, spec)
        ops = onnx_export.op_histogram(path)
        upsamplers = sum(isinstance(m, torch.nn.Upsample) for m in tiny.vae.decoder.modules())
        assert ops["Resize"] == upsamplers and "GatherND" not in ops  # upsampling as Resize (see nearest_upsampling)
        assert ops["Softmax"] == 1  # the mid block's single-head attention (SDPA)
    assert {m.mode for m in tiny.vae.modules() if isinstance(m, torch.nn.Upsample)} == {"nearest-exact"}  # restored
    assert vae_onnx.layout == discover_cache_layout(tiny.vae)
    assert json.loads((vae_onnx.dir / CACHE_LAYOUT_FILE).read_text())[0].keys() == {"channels", "scale"}


@pytest.mark.parametrize("frames", [1, 2, 4])
@pytest.mark.parametrize("batch,height,width", [(1, 3, 5), (2, 6, 4)])
@pytest.mark.slow
def test_vae_onnx_decode_matches_diffusers(vae_onnx: SimpleNamespace, tiny: SimpleNamespace, frames: int,
                                           batch: int, height: int, width: int) -> None:
    assert (batch, height, width) != tuple(onnx_export.export_sizes(vae_onnx.specs[0])[k]
                                          for k in ("batch", "latent_height", "latent_width"))
    rng = np.random.default_rng(frames * 10 + batch)
    z = rng.standard_normal((batch, tiny.info.z_dim, frames, height, width)).astype(np.float32)
    with torch.no_grad():
        ref = tiny.vae.decode(torch.from_numpy(z)).sample.numpy()
    run_first, run_step = vae_onnx.runners
    out = decode_with_frame_graphs(run_first, run_step, z)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=VAE_ATOL, rtol=0)


# --------------------------------------------------------------------------------------------- export helpers


def test_export_patches_cast_float64_buffers_and_restore(tiny: SimpleNamespace) -> None:
    model = copy.deepcopy(tiny.transformer)
    model.rope.freqs_cos = model.rope.freqs_cos.double()  # as in diffusers versions that keep the RoPE in FP64
    processor = model.blocks[0].attn1.processor
    with onnx_export.export_patches(model):
        assert model.rope.freqs_cos.dtype == torch.float32
        assert isinstance(model.blocks[0].attn1.processor, onnx_export.ExportWanAttnProcessor)
        feeds = transformer_spec(tiny.info, "t").sample_inputs({"batch": 1, "latent_frames": 2})
        with torch.no_grad():
            patched = model(*[torch.from_numpy(v) for v in feeds.values()], return_dict=False)[0]
    assert model.rope.freqs_cos.dtype == torch.float64
    assert model.blocks[0].attn1.processor is processor
    with torch.no_grad():
        reference = tiny.transformer(*[torch.from_numpy(v) for v in feeds.values()], return_dict=False)[0]
    torch.testing.assert_close(patched, reference, atol=1e-5, rtol=0)


def test_export_sizes_avoid_specialisation(tiny: SimpleNamespace) -> None:
    first_spec, _ = vae_decoder_frame_specs(tiny.info, discover_cache_layout(tiny.vae))
    assert first_spec.sample_sizes["batch"] == 1
    assert onnx_export.export_sizes(first_spec)["batch"] == 2


# --------------------------------------------------------------------------------------------- the ONNX cache


def _linear_graph(path: Path, weight: np.ndarray) -> None:
    """y = x @ weight, the weight in external data beside the graph (as every exported graph keeps it)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, weight.shape[1]])],
        [numpy_helper.from_array(weight, "w")])
    onnx.save(helper.make_model(graph), str(path), save_as_external_data=True, location=path.name + ".data",
              size_threshold=0)


def test_the_onnx_cache_gives_back_the_stored_graph_under_any_name(tmp_path: Path) -> None:
    from export.onnx_cache import OnnxCache

    cache, weight = OnnxCache(tmp_path / "cache"), np.arange(6, dtype=np.float32).reshape(2, 3)
    made: list[Path] = []

    def make(path: Path) -> None:
        made.append(path)
        _linear_graph(path, weight)

    first, second = tmp_path / "a" / "first.onnx", tmp_path / "b" / "second.onnx"
    for path in (first, second):
        path.parent.mkdir()
    assert cache.fetch_or_make("k", first, make) is False and made == [first]
    assert cache.fetch_or_make("k", second, make) is True and made == [first]  # not made again
    assert onnx_export.external_data_files(second) == {"second.onnx.data"}  # its own data file, beside it
    x = np.ones((1, 2), dtype=np.float32)
    for path in (first, second):
        out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_array_equal(out, x @ weight)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # no staging left


def test_the_onnx_cache_key_follows_weights_declaration_and_opset(tiny: SimpleNamespace) -> None:
    from export.onnx_cache import key

    spec = transformer_spec(tiny.info, TRANSFORMER_HIGH_NOISE)
    model = copy.deepcopy(tiny.transformer)
    base = key(model, spec, 18, None)
    assert key(copy.deepcopy(model), spec, 18, None) == base  # equal inputs, equal address
    assert key(model, spec, 19, None) != base
    assert key(model, transformer_spec(tiny.info, "other"), 18, None) != base
    assert key(model, spec, 18, {"batch": 3}) != base
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-6  # one weight, by the least amount
    assert key(model, spec, 18, None) != base
    moved = copy.deepcopy(tiny.transformer)
    moved.register_to_config(_name_or_path="/elsewhere")  # where the weights were read from is not an input
    assert key(moved, spec, 18, None) == key(tiny.transformer, spec, 18, None)
