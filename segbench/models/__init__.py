"""Model families; importing this package registers the built-in models with :mod:`segbench.registry`.

* :mod:`segbench.models.fcn` — the tutorial's FCN (``fcn``) and the ``fcn_w{W}_d{D}`` family.
* :mod:`segbench.models.unet` — the tutorial's U-Net (``unet``) and the ``unet_w{W}_d{D}`` family.
* :mod:`segbench.models.monai_adapters` — ``monai_*`` networks, registered only when MONAI is installed
  (MONAI itself is imported only when such a model is built).

Use :func:`segbench.registry.build_model` rather than the classes, so plugins and families work the same way.
"""

from segbench.models import fcn, unet
from segbench.models.monai_adapters import register_monai_models

register_monai_models()

__all__ = ["fcn", "unet"]
