"""Model families; importing this package registers the built-in models with :mod:`segbench.registry`.

* :mod:`segbench.models.fcn` — the tutorial's FCN (``fcn``) and the ``fcn_w{W}_d{D}`` family.
* :mod:`segbench.models.unet` — the tutorial's U-Net (``unet``) and the ``unet_w{W}_d{D}`` family.
* :mod:`segbench.models.monai_adapters` — ``monai_*`` networks, registered only when MONAI is installed
  (MONAI itself is imported only when such a model is built).
* :mod:`segbench.models.nnunet_networks` — nnU-Net's ``nnunet_plain`` and ``nnunet_resenc_{m,l,xl}``, built from a plan
  by dynamic-network-architectures, registered only when it is installed (``segbench[nnunet]``).

Use :func:`segbench.registry.build_model` rather than the classes, so plugins and families work the same way.
"""

from segbench.models import fcn, unet
from segbench.models.monai_adapters import register_monai_models
from segbench.models.nnunet_networks import register_nnunet_networks

register_monai_models()
register_nnunet_networks()

__all__ = ["fcn", "unet"]
