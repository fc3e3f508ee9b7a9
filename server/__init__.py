"""What production runs: the tritonserver launcher and its arguments, the HTTP guard in front of Triton's HTTP
port, shared-memory hygiene."""
