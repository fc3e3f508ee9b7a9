# Thin Triton entry point; the model lives in wan22_triton.triton_models.orchestrator.
from wan22_triton.triton_models.orchestrator import TritonPythonModel  # noqa: F401
