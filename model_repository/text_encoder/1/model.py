# Thin Triton entry point; the model lives in wan22_triton.triton_models.text_encoder.
from wan22_triton.triton_models.text_encoder import TritonPythonModel  # noqa: F401
