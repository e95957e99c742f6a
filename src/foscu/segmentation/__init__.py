"""3D U-Net segmentation (paper II-C, Table II): networks, training, sliding-window prediction, the grid."""
