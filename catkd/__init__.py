"""catkd: Class Attention Transfer based Knowledge Distillation (CVPR 2023), reproduced.

The package is layered; each layer imports only those before it:
``data`` (datasets and the fast loader) -> ``models`` (the zoo) -> ``cam`` (the structure
revisit: CAMs from the forward pass) -> ``losses`` (CAT, KD, DKD, AT as pure functions) ->
``methods`` (a batch -> named loss terms) -> ``config`` and ``train`` (``fit``: the engine) ->
``probe`` (linear probing). ``python -m catkd`` is the command line.
"""

__version__ = "0.1.0"
