"""Training engine: the one loop (Lightning Fabric), checkpoints, run directories, optimisers."""
