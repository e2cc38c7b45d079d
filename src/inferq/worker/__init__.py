"""The worker side: load models once per process, run batches, record results."""
