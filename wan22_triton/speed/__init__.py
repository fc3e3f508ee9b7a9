"""The experts' GPU speed options: compile and its artifacts, FP8 GEMMs, attention kernels."""
