"""Each served component declared once, a module each: its tensor names as constants, its contract (dtypes,
dynamic axes, sample inputs), its optional inputs, its warm-up samples, and how the export writes it.

`common` holds what they are made of; `text_encoder`, `expert`, `vae_decoder` and `orchestrator` the models. The
ONNX export, the TensorRT build, the generated `config.pbtxt` files, the serving models, their BLS calls and the
clients all read these declarations (as TensorRT's demo/Diffusion does with its model classes), so a name or a shape
lives in one place. Nothing here imports torch.
"""
