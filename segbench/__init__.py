"""segbench: fair, cross-validated comparison of 3D medical image segmentation architectures."""

__version__ = "0.1.0"

# Packages whose import registers the built-in models (each family module decorates its builders with
# segbench.registry.register_model / register_family). The registry imports them on first use.
BUILTIN_MODEL_PACKAGES = ("segbench.models",)
