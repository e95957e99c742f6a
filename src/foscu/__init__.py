"""FOSCU: synthetic hepatic MRI with labels via Duo-Diffusion, and its effect on 3D U-Nets.

Importing ``foscu`` imports nothing heavy, so ``foscu --help`` stays instant.
"""

__version__ = "0.1.0"
