"""``foscu export``: a run's generator as a shareable folder, a prepared set (+ synthetic pairs) for nnU-Net."""
