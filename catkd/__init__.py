"""catkd: Class Attention Transfer based Knowledge Distillation (CVPR 2023), reproduced.

The package is layered; each layer imports only those before it:
``data`` (datasets and the loaders) -> ``models`` (the zoo) -> ``cam`` (the structure revisit:
CAMs from the forward pass) -> ``losses`` (CAT, KD, DKD, AT, FitNet's hint, RKD's distance and
angle, OFD, CRD and ReviewKD's HCL as pure functions) -> ``methods`` (a batch -> named loss
terms) -> ``config`` -> ``runs`` (the run folder and its readers) -> ``train`` (``fit``: the
engine) -> ``probe`` (linear probing), ``sweep`` and ``report`` (the paper's tables) ->
``chapter`` (what every notebook of the book does: setup, tables shown, claims counted).
``python -m catkd`` is the command line.
"""

__version__ = "0.1.0"
