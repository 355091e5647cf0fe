"""Per-pixel intensity mapping (``baseline``): the floor every real model must beat."""

from torch import nn

from .layers import check_image_batch, require_at_least


class PixelwiseMapping(nn.Module):
    """A tiny multilayer perceptron applied to every pixel on its own, as 1x1 convolutions.

    Reference: the "Simple" baseline of Welander, Karlsson and Eklund, "Generative Adversarial
    Networks for Image-to-Image Translation on Multi-Contrast MR Images - A Comparison of
    CycleGAN and UNIT" (2018): a learned intensity look-up from one contrast to the other,
    blind to anatomy and neighbourhood.

    Shapes: ``(N, in_channels, H, W)`` in [-1, 1] -> ``(N, out_channels, H, W)`` in [-1, 1],
    any ``H`` and ``W``. Layers: 1x1 convolutions through ``hidden_channels`` (default 32 then
    16), each followed by LeakyReLU(0.2), then a 1x1 convolution to ``out_channels`` and tanh;
    609 parameters at the defaults.
    """

    def __init__(self, *, in_channels=1, out_channels=1, hidden_channels=(32, 16)):
        super().__init__()
        require_at_least("baseline", 1, in_channels=in_channels, out_channels=out_channels)
        for width in hidden_channels:
            require_at_least("baseline", 1, hidden_channels=width)
        self.in_channels = in_channels
        layers = []
        width = in_channels
        for hidden in hidden_channels:
            layers += [nn.Conv2d(width, hidden, 1), nn.LeakyReLU(0.2, inplace=True)]
            width = hidden
        layers += [nn.Conv2d(width, out_channels, 1), nn.Tanh()]
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        check_image_batch(x, "baseline", self.in_channels)
        return self.layers(x)
