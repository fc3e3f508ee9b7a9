# Thin Triton entry point; the model lives in wan22_triton.triton_models.transformer.
from wan22_triton.triton_models.transformer import TritonPythonModel  # noqa: F401
