"""U-Net generators of pix2pix: ``unet_128`` (7 downsamplings) and ``unet_256`` (8)."""

import torch
from torch import nn

from .layers import check_image_batch, check_norm, norm_layer, require_at_least, uses_bias


class UnetGenerator(nn.Module):
    """Encoder-decoder with skip connections, as the pix2pix generator.

    References: Ronneberger, Fischer and Brox, "U-Net: Convolutional Networks for Biomedical
    Image Segmentation" (MICCAI 2015); the variant used here is the generator of Isola, Zhu,
    Zhou and Efros, "Image-to-Image Translation with Conditional Adversarial Networks"
    (CVPR 2017).

    Shapes: ``(N, in_channels, H, W)`` in [-1, 1] -> ``(N, out_channels, H, W)`` in [-1, 1].
    ``H`` and ``W`` must be multiples of ``2 ** num_downs`` (128 for ``unet_128``, 256 for
    ``unet_256``): every downsampling halves the size, down to 1x1 at the innermost level for a
    128x128 (``unet_128``) or 256x256 (``unet_256``) slice. Larger multiples work too.

    Encoder level ``i`` is a 4x4 stride-2 convolution to ``ngf * min(2 ** i, 8)`` channels,
    then normalisation (not at the outermost level) and LeakyReLU(0.2); the innermost level is
    the convolution alone, its output going straight to the decoder. Decoder level ``i``
    takes the concatenation of encoder output ``i`` (the skip) and the decoder output from the
    level below, and applies ReLU, a 4x4 stride-2 transposed convolution, normalisation and,
    if ``dropout``, Dropout(0.5); the outermost one ends in tanh instead.
    As in pix2pix, dropout is applied only in the ``num_downs - 5`` decoder levels next to
    the innermost one (those with ``8 * ngf`` channels on both sides), and it is the only
    source of randomness: in ``eval()`` mode the output is deterministic.

    ``in_channels > 1`` takes neighbouring slices as channels (2.5D input).
    """

    def __init__(self, num_downs, *, in_channels=1, out_channels=1, ngf=64, norm="batch",
                 dropout=True):
        super().__init__()
        check_norm(norm)
        require_at_least("unet", 5, num_downs=num_downs)
        require_at_least("unet", 1, in_channels=in_channels, out_channels=out_channels, ngf=ngf)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_downs = num_downs
        widths = [ngf * min(2 ** level, 8) for level in range(num_downs)]
        innermost = num_downs - 1

        self.encoder = nn.ModuleList()
        for level in range(num_downs):
            normalised = 0 < level < innermost
            stage = [nn.Conv2d(in_channels if level == 0 else widths[level - 1], widths[level],
                               4, stride=2, padding=1, bias=uses_bias(norm) or not normalised)]
            if normalised:
                stage.append(norm_layer(norm, widths[level]))
            if level < innermost:
                stage.append(nn.LeakyReLU(0.2, inplace=True))
            self.encoder.append(nn.Sequential(*stage))

        # Ordered innermost first, in the order forward() uses them.
        self.decoder = nn.ModuleList()
        for level in reversed(range(num_downs)):
            stage_in = widths[level] if level == innermost else 2 * widths[level]
            stage = [nn.ReLU(inplace=True)]
            if level == 0:
                stage += [nn.ConvTranspose2d(stage_in, out_channels, 4, stride=2, padding=1),
                          nn.Tanh()]
            else:
                stage += [nn.ConvTranspose2d(stage_in, widths[level - 1], 4, stride=2, padding=1,
                                             bias=uses_bias(norm)),
                          norm_layer(norm, widths[level - 1])]
                if dropout and 4 <= level < innermost:
                    stage.append(nn.Dropout(0.5))
            self.decoder.append(nn.Sequential(*stage))

    def forward(self, x):
        size = 2 ** self.num_downs
        check_image_batch(x, f"unet_{size}", self.in_channels, multiple=size)
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = self.decoder[0](skips.pop())
        for stage in self.decoder[1:]:
            x = stage(torch.cat([skips.pop(), x], dim=1))
        return x
