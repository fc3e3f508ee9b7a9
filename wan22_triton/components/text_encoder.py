"""`text_encoder`: tokenizer + UMT5 as diffusers runs them; embeddings past each prompt's length are zero."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from wan22_triton.components.common import BATCH, Component, ComponentSpec, TensorSpec

if TYPE_CHECKING:
    from export.registry import ExportPlan
    from wan22_triton.checkpoint import CheckpointInfo

TEXT_ENCODER = "text_encoder"
ENTRY = "text_encoder"  # wan22_triton.triton_models.text_encoder serves it
TEXT = "text"  # UTF-8 prompts, one per batch item
PROMPT_EMBEDS = "prompt_embeds"
# Checkpoint sub-folders, copied into the version folder under the same names.
WEIGHTS_FOLDER = "text_encoder"
TOKENIZER_FOLDER = "tokenizer"
WARMUP_SAMPLE = "prompts"


def text_encoder_spec(info: CheckpointInfo) -> ComponentSpec:
    return ComponentSpec(
        name=TEXT_ENCODER,
        inputs=(TensorSpec(TEXT, "object", (BATCH, 1)),),
        outputs=(TensorSpec(PROMPT_EMBEDS, "float32", (BATCH, info.text_len, info.text_dim)),),
        max_batch_size=2,
        sample_sizes={"batch": 2},
    )


def export_components(plan: ExportPlan) -> list[Component]:
    """The torch engine's encoder whatever the export's engine: its weights copied, a warm-up at full batch."""
    info, opts = plan.info, plan.opts
    warmup = ((WARMUP_SAMPLE, {"batch": text_encoder_spec(info).max_batch_size}),) if plan.warm_points else ()
    manifest = dataclasses.replace(plan.manifest(TEXT_ENCODER, WEIGHTS_FOLDER),
                                   low_memory=opts.low_memory or opts.text_encoder_offload)
    write = plan.copy_folders((WEIGHTS_FOLDER, WEIGHTS_FOLDER), (TOKENIZER_FOLDER, TOKENIZER_FOLDER))
    return [Component(TEXT_ENCODER, ENTRY, lambda: text_encoder_spec(info), manifest, write, warmup=warmup,
                      **plan.per_replica())]
