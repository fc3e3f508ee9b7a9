"""What stands in front of Triton's HTTP port: the HTTP guard (http_guard.py: running it; proxy.py: what it does with
a request; inference_request.py: the checks on an inference request; abandonment.py: telling a model that its HTTP
client went away)."""
