"""Duo-Diffusion: label LDM, image LDM + ControlNet, and the Table I baselines (MONAI generative nets)."""
