# Thin Triton entry point; the model lives in wan22_triton.triton_models.vae_decoder.
from wan22_triton.triton_models.vae_decoder import TritonPythonModel  # noqa: F401
