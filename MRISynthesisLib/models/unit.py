"""UNIT: two domains (contrasts) translated through one shared latent space (``unit``)."""

from torch import nn

from ..errors import InputError
from .layers import (ResidualBlock, check_image_batch, check_norm, norm_layer, require_at_least,
                     standard_normal, uses_bias)

DOMAINS = ("a", "b")


class UNITGenerator(nn.Module):
    """Per-domain encoders and decoders that meet in a shared latent space.

    Reference: Liu, Breuel and Kautz, "Unsupervised Image-to-Image Translation Networks"
    (NeurIPS 2017), the weight-sharing version; applied to T1/T2 MRI by Welander, Karlsson and
    Eklund, "Generative Adversarial Networks for Image-to-Image Translation on Multi-Contrast
    MR Images - A Comparison of CycleGAN and UNIT" (2018).

    Domain ``'a'`` holds images with ``in_channels`` channels (e.g. T1), domain ``'b'`` images
    with ``out_channels`` channels (e.g. T2). Data flow::

        x_a -> E_a -+                      +-> G_a -> x_a'
                    +-> E_shared -> z -> G_shared
        x_b -> E_b -+                      +-> G_b -> x_b'

    ``E_d``: 7x7 convolution to ``ngf`` channels, ``n_downsample`` 4x4 stride-2 convolutions
    doubling the width, ``n_res`` residual blocks. ``E_shared`` and ``G_shared``: ``n_shared``
    residual blocks each, one set of weights for both domains. ``G_d``: ``n_res`` residual
    blocks, ``n_downsample`` times (nearest-neighbour 2x upsampling, 3x3 convolution halving
    the width), 7x7 convolution and tanh. All padding is reflection padding; every convolution
    but the last is followed by ``norm`` and ReLU.

    The latent ``z`` is a feature map ``(N, ngf * 2 ** n_downsample, H / 2 ** n_downsample,
    W / 2 ** n_downsample)``. As in UNIT the posterior is ``N(mean, I)``: ``encode`` returns the
    mean, ``sample_latent`` adds unit Gaussian noise for training.

    ``forward(x)`` translates domain ``source_domain`` (``'a'`` by default) to the other one
    through the latent mean (no noise), so with the default it maps ``(N, in_channels, H, W)``
    in [-1, 1] to ``(N, out_channels, H, W)`` in [-1, 1] deterministically in eval mode; the
    same weights with ``source_domain='b'`` give the reverse direction's inference model. ``H`` and ``W`` must be multiples of
    ``2 ** n_downsample`` and at least ``max(4, 2 ** (n_downsample + 1))`` pixels (reflection
    padding); 256x256 is usual.
    """

    def __init__(self, *, in_channels=1, out_channels=1, ngf=32, n_downsample=2, n_res=3,
                 n_shared=1, norm="instance", source_domain="a"):
        super().__init__()
        check_norm(norm)
        _check_domain(source_domain)
        self.source_domain = source_domain
        require_at_least("unit", 1, in_channels=in_channels, out_channels=out_channels, ngf=ngf,
                         n_shared=n_shared)
        require_at_least("unit", 0, n_downsample=n_downsample, n_res=n_res)
        self.channels = {"a": in_channels, "b": out_channels}
        self.n_downsample = n_downsample
        latent_channels = ngf * 2 ** n_downsample

        def conv_norm_relu(channels_in, channels_out, kernel, stride=1):
            return [nn.Conv2d(channels_in, channels_out, kernel, stride=stride,
                              padding=(kernel - 1) // 2 if stride == 1 else 1,
                              padding_mode="reflect", bias=uses_bias(norm)),
                    norm_layer(norm, channels_out), nn.ReLU(inplace=True)]

        def domain_encoder(channels):
            layers = conv_norm_relu(channels, ngf, 7)
            for step in range(n_downsample):
                layers += conv_norm_relu(ngf * 2 ** step, ngf * 2 ** (step + 1), 4, stride=2)
            layers += [ResidualBlock(latent_channels, norm) for _ in range(n_res)]
            return nn.Sequential(*layers)

        def domain_decoder(channels):
            layers = [ResidualBlock(latent_channels, norm) for _ in range(n_res)]
            for step in range(n_downsample):
                width = latent_channels // 2 ** step
                layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                           *conv_norm_relu(width, width // 2, 3)]
            layers += [nn.Conv2d(ngf, channels, 7, padding=3, padding_mode="reflect"), nn.Tanh()]
            return nn.Sequential(*layers)

        self.encoders = nn.ModuleDict({d: domain_encoder(self.channels[d]) for d in DOMAINS})
        self.shared_encoder = nn.Sequential(
            *[ResidualBlock(latent_channels, norm) for _ in range(n_shared)])
        self.shared_decoder = nn.Sequential(
            *[ResidualBlock(latent_channels, norm) for _ in range(n_shared)])
        self.decoders = nn.ModuleDict({d: domain_decoder(self.channels[d]) for d in DOMAINS})

    def encode(self, x, domain):
        """Latent mean of images ``x`` from ``domain`` (``'a'`` or ``'b'``)."""
        _check_domain(domain)
        size = 2 ** self.n_downsample
        check_image_batch(x, f"unit domain {domain!r}", self.channels[domain], multiple=size,
                          min_size=max(4, 2 * size))
        return self.shared_encoder(self.encoders[domain](x))

    @staticmethod
    def sample_latent(mean, generator=None):
        """A latent drawn from the posterior ``N(mean, I)`` (unit variance, as in UNIT)."""
        return mean + standard_normal(mean.shape, mean, generator)

    def decode(self, z, domain):
        """Images of ``domain`` from latent ``z``: ``(N, channels of domain, H, W)`` in [-1, 1]."""
        _check_domain(domain)
        return self.decoders[domain](self.shared_decoder(z))

    def translate(self, x, source_domain):
        """Images of the other domain, decoded from the latent mean of ``x`` (no noise)."""
        target_domain = "b" if source_domain == "a" else "a"
        return self.decode(self.encode(x, source_domain), target_domain)

    def forward(self, x):
        """Translate ``source_domain`` to the other domain (``'a'`` -> ``'b'`` by default)."""
        return self.translate(x, self.source_domain)


def _check_domain(domain):
    if domain not in DOMAINS:
        raise InputError(f"unknown UNIT domain {domain!r}; valid: {', '.join(DOMAINS)}")
