"""3D U-Net segmentation (paper II-C, Table II): networks, the ``seg`` stage's recipe, sliding-window prediction."""
