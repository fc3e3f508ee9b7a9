"""What production runs around NVIDIA Triton Inference Server (``python -m server.launcher``: ``make serve``, the serve
image). Modules:

* launcher.py: the CLI, tritonserver in the foreground until a signal stops it;
* triton_server.py: ``TritonServer``, the same server in the background, ready when started (tests, demo, benchmarks);
* process.py: one tritonserver process (own process group, bounded stop) and the HTTP guard in front of its HTTP port;
* tritonserver_args.py: its command line (loopback by default, admin APIs behind a key, exit timeout);
* tritonserver_install.py: the binary (PATH or the nvidia-pytriton wheel) and the environment it runs in;
* shm_regions.py: the Python backend's /dev/shm regions, named after the server, removed once it is gone;
* http_guard.py, proxy.py, inference_request.py: the HTTP guard, which checks inference requests before Triton's JSON
  parser sees them (also ``python -m server.http_guard``).

Not installed with ``wan22_triton`` (what the Python-backend stub imports): run from the repository root, or with it on
``PYTHONPATH`` as in the serve image.
"""
