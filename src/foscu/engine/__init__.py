"""One training engine for every stage: loop, checkpoints, distributed helpers, tracking."""
