"""The request path: the pipeline in numbered steps, sampler presets, per-call LoRA choice, video output."""
