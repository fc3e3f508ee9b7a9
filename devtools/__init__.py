"""Developer tools around the product: the tritonserver launcher, the embedded tiny checkpoint and the demo.

Not part of the serving package (`wan22_triton`, what the Python-backend stub imports): run from the repository
root (`python -m server.launcher`, `python -m devtools.tiny_checkpoint`, `python -m devtools.demo`).
"""
