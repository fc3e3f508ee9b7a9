"""Kubernetes deployment of the Wan2.2 Triton server, rendered from typed values (values.py) by render.py."""
