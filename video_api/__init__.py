"""The OpenAI-compatible video jobs API (`/v1/videos`) in front of Triton.

A job is a row of a database (store.py: SQLite by default, PostgreSQL by URL) that a runner (runner.py) claims,
runs as one streaming gRPC request to the served orchestrator (progress from its per-step messages) and completes
with the MP4 on disk. The HTTP service (app.py, FastAPI) speaks OpenAI's video API; request fields are mapped to the
request contract from the served checkpoint's facts (mapping.py). `python -m video_api` starts it.
"""

DEFAULT_PORT = 8080  # `python -m video_api serve`'s, and the serve image's
