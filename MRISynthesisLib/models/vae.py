"""Convolutional variational autoencoder (``vae``) with a deterministic forward pass."""

import torch
from torch import nn

from ..errors import InputError
from .layers import (check_image_batch, check_norm, norm_layer, require_at_least, standard_normal,
                     uses_bias)

_BOTTLENECK_SIZE = 4  # the encoder halves the slice until it is 4x4


class VariationalAutoencoder(nn.Module):
    """Encoder to a Gaussian latent vector, decoder from it to the target contrast.

    Reference: Kingma and Welling, "Auto-Encoding Variational Bayes" (ICLR 2014); the
    convolutional layout follows the DCGAN encoder/decoder of Radford, Metz and Chintala
    (ICLR 2016). Trained as a conditional synthesiser: the encoder sees the source contrast,
    the decoder reconstructs the target contrast.

    Shapes: ``(N, in_channels, image_size, image_size)`` in [-1, 1] ->
    ``(N, out_channels, image_size, image_size)`` in [-1, 1]; the latent is
    ``(N, latent_dim)``. Only slices of exactly ``image_size`` pixels are accepted (the latent
    is reached through a linear layer). ``image_size`` must be ``4 * 2 ** n`` with ``n >= 1``
    (8, 16, ..., 128, 256, 512): the encoder has ``n`` stride-2 blocks down to 4x4 (6 for the
    default 256) and the decoder mirrors them.

    Encoder block ``i``: 4x4 stride-2 convolution to ``nf * min(2 ** i, 8)`` channels, ``norm``
    (not in the first block), LeakyReLU(0.2); then two linear layers give the posterior mean
    ``mu`` and log-variance ``logvar``. Decoder: linear layer and ReLU back to the 4x4 feature
    map, 4x4 stride-2 transposed convolutions each followed by ``norm`` and ReLU, the last one
    to ``out_channels`` followed by tanh.

    ``forward(x)`` decodes the posterior mean, so inference is deterministic; ``sample`` draws
    stochastic reconstructions for uncertainty maps; training uses ``encode``,
    ``reparameterise`` and ``decode``.
    """

    def __init__(self, *, in_channels=1, out_channels=1, image_size=256, latent_dim=128, nf=32,
                 norm="batch"):
        super().__init__()
        check_norm(norm)
        require_at_least("vae", 1, in_channels=in_channels, out_channels=out_channels,
                         latent_dim=latent_dim, nf=nf)
        n_blocks = _halvings_to_bottleneck(image_size)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.image_size = image_size
        self.latent_dim = latent_dim
        widths = [nf * min(2 ** block, 8) for block in range(n_blocks)]
        self._bottleneck_channels = widths[-1]
        bias = uses_bias(norm)

        encoder = []
        for block, width in enumerate(widths):
            first = block == 0
            encoder.append(nn.Conv2d(in_channels if first else widths[block - 1], width, 4,
                                     stride=2, padding=1, bias=first or bias))
            if not first:
                encoder.append(norm_layer(norm, width))
            encoder.append(nn.LeakyReLU(0.2, inplace=True))
        encoder.append(nn.Flatten())
        self.encoder = nn.Sequential(*encoder)
        flat = widths[-1] * _BOTTLENECK_SIZE ** 2
        self.to_mu = nn.Linear(flat, latent_dim)
        self.to_logvar = nn.Linear(flat, latent_dim)

        self.from_latent = nn.Sequential(nn.Linear(latent_dim, flat), nn.ReLU(inplace=True))
        decoder = []
        for block in reversed(range(1, n_blocks)):
            decoder += [nn.ConvTranspose2d(widths[block], widths[block - 1], 4, stride=2,
                                           padding=1, bias=bias),
                        norm_layer(norm, widths[block - 1]), nn.ReLU(inplace=True)]
        decoder += [nn.ConvTranspose2d(widths[0], out_channels, 4, stride=2, padding=1),
                    nn.Tanh()]
        self.decoder = nn.Sequential(*decoder)

    def encode(self, x):
        """``(N, in_channels, S, S)`` -> ``(mu, logvar)``, each ``(N, latent_dim)``.

        ``logvar`` is clamped to [-30, 20] so that ``exp`` cannot overflow early in training.
        """
        check_image_batch(x, "vae", self.in_channels, exact_size=self.image_size)
        features = self.encoder(x)
        return self.to_mu(features), self.to_logvar(features).clamp(-30.0, 20.0)

    @staticmethod
    def reparameterise(mu, logvar, generator=None):
        """A latent drawn from ``N(mu, exp(logvar))``, differentiable in ``mu`` and ``logvar``."""
        return mu + torch.exp(0.5 * logvar) * standard_normal(mu.shape, mu, generator)

    def decode(self, z):
        """``(N, latent_dim)`` -> ``(N, out_channels, S, S)`` in [-1, 1]."""
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise InputError(
                f"vae.decode expects a (N, {self.latent_dim}) latent; got shape {tuple(z.shape)}"
            )
        features = self.from_latent(z).view(
            -1, self._bottleneck_channels, _BOTTLENECK_SIZE, _BOTTLENECK_SIZE)
        return self.decoder(features)

    def forward(self, x):
        """Deterministic synthesis: the decoded posterior mean, ``decode(encode(x)[0])``."""
        mu, _ = self.encode(x)
        return self.decode(mu)

    def sample(self, x, n, generator=None):
        """``n`` stochastic syntheses of every slice: ``(n, N, out_channels, S, S)``.

        Each one decodes a latent drawn from the posterior ``N(mu, exp(logvar))``; their spread
        per pixel is an uncertainty map. ``generator`` (a ``torch.Generator``) makes the draws
        reproducible. All ``n * N`` latents are decoded as one batch.
        """
        if n < 1:
            raise InputError(f"vae.sample needs n >= 1 samples; got {n!r}")
        mu, logvar = self.encode(x)
        mu = mu.expand(n, *mu.shape)
        logvar = logvar.expand(n, *logvar.shape)
        z = self.reparameterise(mu, logvar, generator)
        images = self.decode(z.reshape(-1, self.latent_dim))
        return images.view(n, x.shape[0], *images.shape[1:])


def _halvings_to_bottleneck(image_size):
    """Number of stride-2 blocks from ``image_size`` to 4; InputError unless it is 4 * 2 ** n."""
    n_blocks = (image_size // _BOTTLENECK_SIZE).bit_length() - 1
    if n_blocks < 1 or image_size != _BOTTLENECK_SIZE * 2 ** n_blocks:
        raise InputError(
            f"vae: image_size must be 4 * 2 ** n with n >= 1 (8, 16, ..., 128, 256, 512); "
            f"got {image_size!r}"
        )
    return n_blocks
