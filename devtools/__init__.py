"""Developer tools, not part of the product: the tiny random checkpoint (``python -m devtools.tiny_checkpoint``), tiny
LoRA adapters (``python -m devtools.tiny_lora``) and the demo (``python -m devtools.demo``). Run from the repository
root."""
