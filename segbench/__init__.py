"""segbench: fair, cross-validated comparison of 3D medical image segmentation architectures."""

__version__ = "0.1.0"
