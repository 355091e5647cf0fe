"""ResNet generators of CycleGAN: ``resnet_6blocks`` and ``resnet_9blocks``."""

from torch import nn

from .layers import (ResidualBlock, check_image_batch, check_norm, norm_layer, require_at_least,
                     uses_bias)


class ResnetGenerator(nn.Module):
    """Downsample twice, ``n_blocks`` residual blocks, upsample twice.

    References: Johnson, Alahi and Fei-Fei, "Perceptual Losses for Real-Time Style Transfer
    and Super-Resolution" (ECCV 2016), as used for the generators of Zhu, Park, Isola and
    Efros, "Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial Networks"
    (ICCV 2017).

    Shapes: ``(N, in_channels, H, W)`` in [-1, 1] -> ``(N, out_channels, H, W)`` in [-1, 1].
    Fully convolutional: ``H`` and ``W`` must be multiples of 4 (two stride-2 steps) and at
    least 8 pixels (reflection padding at the quarter-resolution bottleneck); 256x256 is the
    usual slice size.

    Layers: 7x7 convolution to ``ngf`` channels (reflection padding), two 3x3 stride-2
    convolutions to ``4 * ngf``, ``n_blocks`` residual blocks, two 3x3 stride-2 transposed
    convolutions back to ``ngf``, 7x7 convolution (reflection padding) and tanh. Every
    convolution but the last is followed by ``norm`` and ReLU. ``dropout`` adds Dropout(0.5)
    inside each residual block (CycleGAN trains without it).
    """

    def __init__(self, n_blocks, *, in_channels=1, out_channels=1, ngf=64, norm="instance",
                 dropout=False):
        super().__init__()
        check_norm(norm)
        require_at_least("resnet", 1, n_blocks=n_blocks, in_channels=in_channels,
                         out_channels=out_channels, ngf=ngf)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.n_blocks = n_blocks
        bias = uses_bias(norm)

        layers = [nn.Conv2d(in_channels, ngf, 7, padding=3, padding_mode="reflect", bias=bias),
                  norm_layer(norm, ngf), nn.ReLU(inplace=True)]
        for step in range(2):
            width = ngf * 2 ** step
            layers += [nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=bias),
                       norm_layer(norm, 2 * width), nn.ReLU(inplace=True)]
        layers += [ResidualBlock(4 * ngf, norm, dropout) for _ in range(n_blocks)]
        for step in range(2):
            width = 4 * ngf // 2 ** step
            layers += [nn.ConvTranspose2d(width, width // 2, 3, stride=2, padding=1,
                                          output_padding=1, bias=bias),
                       norm_layer(norm, width // 2), nn.ReLU(inplace=True)]
        layers += [nn.Conv2d(ngf, out_channels, 7, padding=3, padding_mode="reflect"), nn.Tanh()]
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        check_image_batch(x, f"resnet_{self.n_blocks}blocks", self.in_channels,
                          multiple=4, min_size=8)
        return self.layers(x)
