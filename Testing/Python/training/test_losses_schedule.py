"""GAN objectives (the wgan-gp penalty really applied), the image pool and the LR policies."""

import random

import pytest
import torch

from MRISynthesisLib.models import build_model
from Training.losses import ImagePool, discriminator_loss, generator_adversarial_loss, gradient_penalty
from Training.schedule import lr_factor


def _disc():
    torch.manual_seed(0)
    return build_model("patchgan", in_channels=1, ndf=4, n_layers=2, norm="none")


@pytest.mark.parametrize("mode", ["vanilla", "lsgan", "hinge", "wgan-gp"])
def test_every_gan_mode_gives_finite_losses_and_gradients(mode):
    d = _disc()
    real, fake = torch.rand(2, 1, 32, 32) * 2 - 1, torch.rand(2, 1, 32, 32) * 2 - 1
    loss, _ = discriminator_loss(mode, d, real, fake)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in d.parameters())
    assert torch.isfinite(generator_adversarial_loss(mode, d(fake)))


def test_wgan_gp_discriminator_loss_includes_the_gradient_penalty():
    d = _disc()
    real, fake = torch.rand(2, 1, 32, 32), -torch.rand(2, 1, 32, 32)
    torch.manual_seed(5)
    with_gp, parts = discriminator_loss("wgan-gp", d, real, fake, gp_weight=10.0)
    torch.manual_seed(5)
    without_gp, _ = discriminator_loss("wgan-gp", d, real, fake, gp_weight=0.0)
    assert parts["d_gradient_penalty"] > 0
    assert float((with_gp - without_gp).detach()) == pytest.approx(10.0 * parts["d_gradient_penalty"], rel=1e-4)
    grads = torch.autograd.grad(with_gp - without_gp, list(d.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)  # the penalty trains D


def test_gradient_penalty_is_zero_for_a_unit_gradient_critic():
    critic = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 1, bias=False))
    with torch.no_grad():
        critic[1].weight.zero_()
        critic[1].weight[0, 0] = 1.0
    assert float(gradient_penalty(critic, torch.rand(3, 1, 4, 4), torch.rand(3, 1, 4, 4)).detach()) == pytest.approx(0.0)


def test_image_pool_fills_then_mixes_and_round_trips():
    random.seed(0)
    pool = ImagePool(3)
    first = torch.arange(3.0).view(3, 1, 1, 1)
    assert torch.equal(pool.query(first), first)
    mixed = pool.query(torch.full((8, 1, 1, 1), 9.0))
    assert set(mixed.flatten().tolist()) <= {0.0, 1.0, 2.0, 9.0} and (mixed != 9).any()
    copy = ImagePool(0)
    copy.load_state_dict(pool.state_dict())
    assert copy.size == 3 and all(torch.equal(a, b) for a, b in zip(copy.images, pool.images))
    assert torch.equal(ImagePool(0).query(first), first)


def test_lr_policies():
    assert lr_factor("linear", 4.9, 10) == 1.0
    assert lr_factor("linear", 7.5, 10) == pytest.approx(0.5)
    assert lr_factor("linear", 10, 10) == pytest.approx(0.0)
    assert lr_factor("linear", 9, 10, decay_epochs=2) == pytest.approx(0.5)
    assert lr_factor("step", 120, 200, step_epochs=50, gamma=0.1) == pytest.approx(0.01)
    assert lr_factor("cosine", 5, 10) == pytest.approx(0.5)
    assert lr_factor("constant", 9, 10) == 1.0
