"""Training engine: the one loop (Lightning Fabric set-up, checkpointing, evaluations, monitoring, optimisers)."""
