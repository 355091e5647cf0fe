"""PatchGAN discriminator (``patchgan``), optionally with spectral normalisation."""

from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as apply_spectral_norm

from ..errors import InputError
from .layers import check_image_batch, check_norm, norm_layer, require_at_least, uses_bias


class PatchGANDiscriminator(nn.Module):
    """Fully convolutional discriminator that scores overlapping image patches.

    Reference: Isola, Zhu, Zhou and Efros, "Image-to-Image Translation with Conditional
    Adversarial Networks" (CVPR 2017), the "70x70 PatchGAN" for ``n_layers=3``. Spectral
    normalisation: Miyato, Kataoka, Koyama and Yoshida, "Spectral Normalization for Generative
    Adversarial Networks" (ICLR 2018).

    Shapes: ``(N, in_channels, H, W) -> (N, 1, h, w)`` raw logits (no sigmoid), one per patch,
    with ``h = H // 2 ** n_layers - 2``; e.g. 256x256 -> 30x30 for ``n_layers=3``. ``H`` and
    ``W`` must be at least ``3 * 2 ** n_layers`` pixels. ``in_channels`` is 2 for a conditional
    (pix2pix) discriminator that sees the input slice and the real or synthetic output.

    Layers: a 4x4 stride-2 convolution to ``ndf`` channels, ``n_layers - 1`` more 4x4 stride-2
    convolutions doubling the width (capped at ``8 * ndf``), one 4x4 stride-1 convolution, each
    followed by ``norm`` (not after the first) and LeakyReLU(0.2), and a final 4x4 stride-1
    convolution to one channel.

    ``spectral_norm=True`` wraps every convolution in
    ``torch.nn.utils.parametrizations.spectral_norm``, which divides the weight by its largest
    singular value and so bounds the discriminator's Lipschitz constant. That takes the place
    of a normalisation layer, so it requires ``norm='none'``; asking for both raises
    :class:`InputError` rather than silently mixing them.
    """

    def __init__(self, *, in_channels=1, ndf=64, n_layers=3, norm="batch", spectral_norm=False):
        super().__init__()
        check_norm(norm)
        require_at_least("patchgan", 1, in_channels=in_channels, ndf=ndf, n_layers=n_layers)
        if spectral_norm and norm != "none":
            raise InputError(
                f"patchgan: spectral_norm=True replaces normalisation layers; "
                f"pass norm='none' (got norm={norm!r})"
            )
        self.in_channels = in_channels
        self.n_layers = n_layers

        def conv(channels_in, channels_out, stride, bias):
            layer = nn.Conv2d(channels_in, channels_out, 4, stride=stride, padding=1, bias=bias)
            return apply_spectral_norm(layer) if spectral_norm else layer

        layers = [conv(in_channels, ndf, 2, True), nn.LeakyReLU(0.2, inplace=True)]
        width = ndf
        for layer_index in range(1, n_layers + 1):
            stride = 2 if layer_index < n_layers else 1
            next_width = ndf * min(2 ** layer_index, 8)
            layers += [conv(width, next_width, stride, uses_bias(norm)),
                       norm_layer(norm, next_width), nn.LeakyReLU(0.2, inplace=True)]
            width = next_width
        layers.append(conv(width, 1, 1, True))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        check_image_batch(x, "patchgan", self.in_channels, min_size=3 * 2 ** self.n_layers)
        return self.layers(x)
