"""Residual U-Net: a fully convolutional generator that trains on crops and runs on whole slices."""

import torch
from torch import nn

from .layers import check_image_batch, check_norm, norm_layer, require_at_least, uses_bias


def _conv_norm_relu(in_channels, out_channels, norm, kernel=3, stride=1):
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=uses_bias(norm)),
        norm_layer(norm, out_channels),
        nn.ReLU(inplace=True))


class _Residual(nn.Module):
    """conv3x3, norm, ReLU, conv3x3, norm, + input, ReLU (He et al. 2016, post-activation)."""

    def __init__(self, channels, norm):
        super().__init__()
        self.body = nn.Sequential(
            _conv_norm_relu(channels, channels, norm),
            nn.Conv2d(channels, channels, 3, padding=1, bias=uses_bias(norm)),
            norm_layer(norm, channels))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(x + self.body(x))


class ResUnetGenerator(nn.Module):
    """U-Net with residual blocks at every level and a shallow down-sampling path.

    Shapes: ``(N, in_channels, H, W)`` in [-1, 1] -> ``(N, out_channels, H, W)`` in [-1, 1] (tanh).
    ``H`` and ``W`` may be any multiple of ``2 ** levels`` (16 with the default four levels), so
    the same weights train on random crops (e.g. 160 x 160 pixels) and synthesise whole
    256 x 256 slices. The receptive field (several hundred pixels at the bottleneck) still
    covers a whole brain slice at 1 mm.

    Level ``l`` works at ``1 / 2**l`` of the input size with ``ngf * min(2**l, max_mult)``
    channels: ``blocks`` residual blocks, then a stride-2 3x3 convolution down. The decoder
    mirrors it: a 2x2 stride-2 transposed convolution (kernel = stride: no overlapping
    kernels, so no checkerboard artefacts, at a quarter of the cost of a 3x3 convolution at the
    finer level), concatenation with the encoder's skip, a 1x1 fusion convolution and
    ``blocks`` residual blocks. A 1x1 convolution and tanh give the output.

    ``norm``: 'batch' (default; running statistics in eval mode, so a crop and a whole slice
    are treated alike), 'instance' or 'none'. Weights are He-initialised (``init_kind``); without
    normalisation the last convolution of every residual branch then starts at zero
    (:meth:`after_init`), so each block starts as the identity and the signal does not grow
    with depth.
    ``in_channels > 1`` takes neighbouring slices as channels (2.5D input).
    """

    init_kind = "kaiming"

    def __init__(self, *, in_channels=1, out_channels=1, ngf=32, levels=4, blocks=1, max_mult=8,
                 norm="batch"):
        super().__init__()
        check_norm(norm)
        require_at_least("resunet", 1, in_channels=in_channels, out_channels=out_channels, ngf=ngf,
                         levels=levels, blocks=blocks, max_mult=max_mult)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.levels = levels
        self.norm = norm
        widths = [ngf * min(2 ** level, max_mult) for level in range(levels + 1)]

        self.stem = _conv_norm_relu(in_channels, widths[0], norm)
        self.encoder = nn.ModuleList(
            nn.Sequential(*[_Residual(widths[level], norm) for _ in range(blocks)]) for level in range(levels))
        self.down = nn.ModuleList(
            _conv_norm_relu(widths[level], widths[level + 1], norm, stride=2) for level in range(levels))
        self.bottleneck = nn.Sequential(*[_Residual(widths[levels], norm) for _ in range(blocks)])
        # Decoder modules are indexed by level, like the encoder; forward() runs them deepest first.
        self.up = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose2d(widths[level + 1], widths[level], 2, stride=2, bias=uses_bias(norm)),
                          norm_layer(norm, widths[level]), nn.ReLU(inplace=True)) for level in range(levels))
        self.fuse = nn.ModuleList(
            _conv_norm_relu(2 * widths[level], widths[level], norm, kernel=1) for level in range(levels))
        self.decoder = nn.ModuleList(
            nn.Sequential(*[_Residual(widths[level], norm) for _ in range(blocks)]) for level in range(levels))
        self.head = nn.Sequential(nn.Conv2d(widths[0], out_channels, 1), nn.Tanh())

    def after_init(self):
        """Called by the model registry after the weight initialisation."""
        if self.norm == "none":
            with torch.no_grad():
                for module in self.modules():
                    if isinstance(module, _Residual):
                        module.body[-2].weight.zero_()

    def forward(self, x):
        check_image_batch(x, "resunet", self.in_channels, multiple=2 ** self.levels)
        x = self.stem(x)
        skips = []
        for level in range(self.levels):
            x = self.encoder[level](x)
            skips.append(x)
            x = self.down[level](x)
        x = self.bottleneck(x)
        for level in reversed(range(self.levels)):
            x = self.up[level](x)
            x = self.fuse[level](torch.cat([skips[level], x], dim=1))
            x = self.decoder[level](x)
        return self.head(x)
