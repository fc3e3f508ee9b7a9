"""Several GPUs: the parallel plan (replicas, CFG parallel, Ulysses), sequence parallel attention, worker groups."""
