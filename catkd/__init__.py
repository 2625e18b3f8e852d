"""catkd: Class Attention Transfer based Knowledge Distillation (CVPR 2023), reproduced.

The package is layered; each layer imports only those before it:
``models`` (the zoo) -> ``cam`` (the structure revisit: CAMs from the forward pass) -> ``losses``
(CAT, KD, DKD, AT as pure functions).
"""

__version__ = "0.1.0"
