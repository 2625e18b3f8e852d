"""Small vision transformers for 28x28 and 32x32 inputs, with the zoo's GAP + Linear head.

A patch-embedding convolution (patch 4: a 7x7 token grid on Fashion-MNIST, 8x8 on CIFAR),
fixed 2-D sine-cosine position embeddings, pre-norm transformer encoder layers, a final
LayerNorm, then the average of the patch tokens and one Linear, with no class token (the
"simple ViT" recipe of Beyer et al., 2022). The norm acts on each token on its own, so it sits
before the pooling: ``forward_features`` returns the normed tokens laid out on their grid,
(N, D, h, w), and ``forward_head`` is the zoo's GAP + Linear. So ``catkd.cam.convert`` gives
its CAMs exactly, one class score per patch, like any zoo CNN's.

* ``vit_micro``: width 64, 4 layers, 4 heads, MLP 128 (0.144 M parameters at 100 classes):
  a student that trains an epoch of Fashion-MNIST on one CPU thread in minutes (quick profile).
* ``vit_tiny``: DeiT-tiny's width, depth, heads and MLP (192, 12, 3, 768; 5.37 M parameters)
  on patch-4 tokens, for CIFAR-100 on a GPU.

The position embeddings are computed for the grid of each input, so any input size whose sides
the patch divides works; they have no parameters, so nothing depends on the training size.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from catkd.models.base import GAPClassifier
from catkd.models.registry import register


def sincos_position_embedding(height: int, width: int, dim: int,
                              device: torch.device | None = None,
                              temperature: float = 10_000.0) -> torch.Tensor:
    """Fixed 2-D position embeddings, (height * width, dim) in row-major order.

    A quarter of the channels each: sin and cos of the row, sin and cos of the column, at
    geometrically spaced frequencies (the transformer's 1-D embedding, once per axis).
    """
    if dim % 4:
        raise ValueError(f"the width must be a multiple of 4 for 2-D sine-cosine embeddings, "
                         f"got {dim}")
    rows, columns = torch.meshgrid(torch.arange(height, dtype=torch.float32, device=device),
                                   torch.arange(width, dtype=torch.float32, device=device),
                                   indexing="ij")
    steps = torch.arange(dim // 4, dtype=torch.float32, device=device)
    frequencies = temperature ** -(steps / (dim // 4))
    rows = rows.flatten()[:, None] * frequencies[None, :]  # (h w, dim / 4)
    columns = columns.flatten()[:, None] * frequencies[None, :]
    return torch.cat([rows.sin(), rows.cos(), columns.sin(), columns.cos()], dim=1)


class ViT(GAPClassifier):
    """Patch embedding, ``depth`` pre-norm encoder layers, final norm, GAP of patch tokens, fc.

    (N, in_channels, H, W) images -> (N, num_classes) logits; the tokens form an
    (H / patch) x (W / patch) grid.
    """

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float, num_classes: int = 100,
                 in_channels: int = 3, patch: int = 4) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.blocks = nn.Sequential(*(
            nn.TransformerEncoderLayer(dim, heads, dim_feedforward=int(dim * mlp_ratio),
                                       dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True)
            for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # Small Gaussian weights, zero biases: the usual ViT start, in which every residual
        # branch begins close to the identity. (PyTorch's default init of the attention's input
        # projection is kept; it is already Xavier.)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.kaiming_normal_(self.patch_embed.weight, mode="fan_in", nonlinearity="linear")
        nn.init.zeros_(self.patch_embed.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) images -> (N, dim, H / patch, W / patch) normed patch tokens."""
        grid = self.patch_embed(x)  # (N, D, h, w)
        n, dim, height, width = grid.shape
        tokens = grid.flatten(2).transpose(1, 2)  # (N, h w, D), row-major
        # Computed for this grid (a few microseconds): no parameter ties the model to one size.
        position = sincos_position_embedding(height, width, dim, tokens.device)
        tokens = tokens + position.to(tokens.dtype)
        tokens = self.norm(self.blocks(tokens))
        return tokens.transpose(1, 2).reshape(n, dim, height, width)

    def get_classifier(self) -> nn.Linear:
        return self.fc


# name -> (width, depth, heads, MLP width / width)
_CONFIGS: dict[str, tuple[int, int, int, float]] = {
    "vit_micro": (64, 4, 4, 2.0),
    "vit_tiny": (192, 12, 3, 4.0),  # DeiT-tiny's
}

for _name, _config in _CONFIGS.items():
    register(_name)(partial(ViT, *_config))
