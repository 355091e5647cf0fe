"""Specification of the model registry (MRISynthesisLib.models): names, configs, shapes, sizes."""

import json

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from MRISynthesisLib.errors import InputError
from MRISynthesisLib.models import (DISCRIMINATOR_NAMES, GENERATOR_NAMES, MODEL_NAMES, build_model,
                                    default_config, init_weights)

# Narrow networks keep the whole file fast on two CPU cores; the layouts are the real ones.
SMALL = {
    "unet_128": {"ngf": 4},
    "unet_256": {"ngf": 4},
    "resnet_6blocks": {"ngf": 4},
    "resnet_9blocks": {"ngf": 4},
    "resunet": {"ngf": 4},
    "vae": {"nf": 4},
    "unit": {"ngf": 4},
    "baseline": {},
    "patchgan": {"ndf": 8},
}
SLICE_SIZE = {name: 128 if name == "unet_128" else 256 for name in MODEL_NAMES}


def small_model(name, **config):
    torch.manual_seed(0)
    return build_model(name, **{**SMALL[name], **config})


def slices(size, channels=1, batch=2, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, size, size, generator=generator) * 2 - 1


def parameter_count(model):
    return sum(parameter.numel() for parameter in model.parameters())


def test_registry_lists_generators_and_discriminators():
    assert set(MODEL_NAMES) == set(GENERATOR_NAMES) | set(DISCRIMINATOR_NAMES)
    assert not set(GENERATOR_NAMES) & set(DISCRIMINATOR_NAMES)
    assert {"unet_128", "unet_256", "resnet_6blocks", "resnet_9blocks", "resunet", "vae", "unit",
            "baseline"} == set(GENERATOR_NAMES)
    assert DISCRIMINATOR_NAMES == ("patchgan",)
    assert set(SMALL) == set(MODEL_NAMES)


@pytest.mark.parametrize("name", GENERATOR_NAMES)
def test_generator_maps_slices_to_same_size_in_tanh_range(name):
    model = small_model(name).eval()
    size = SLICE_SIZE[name]
    with torch.no_grad():
        output = model(slices(size))
    assert output.shape == (2, 1, size, size)
    assert output.dtype == torch.float32
    assert output.abs().max() <= 1.0
    assert output.std() > 0  # not a constant image


@pytest.mark.parametrize("name", GENERATOR_NAMES)
def test_generator_takes_neighbouring_slices_as_channels(name):
    model = small_model(name, in_channels=3).eval()
    size = SLICE_SIZE[name]
    with torch.no_grad():
        output = model(slices(size, channels=3))
    assert output.shape == (2, 1, size, size)


# Parameters that forward() does not use: the VAE decodes the posterior mean only, UNIT
# translates a -> b only.
UNUSED_IN_FORWARD = {"vae": ("to_logvar.",), "unit": ("encoders.b.", "decoders.a.")}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_backpropagates_to_every_parameter_it_uses(name):
    model = small_model(name).train()
    model(slices(SLICE_SIZE[name])).square().mean().backward()
    for parameter_name, parameter in model.named_parameters():
        if parameter_name.startswith(UNUSED_IN_FORWARD.get(name, ())):
            assert parameter.grad is None, parameter_name
            continue
        assert parameter.grad is not None, parameter_name
        assert torch.isfinite(parameter.grad).all(), parameter_name


def test_vae_training_path_backpropagates_to_every_parameter():
    model = small_model("vae").train()
    mu, logvar = model.encode(slices(256))
    reconstruction = model.decode(model.reparameterise(mu, logvar))
    kl_divergence = -0.5 * (1 + logvar - mu.square() - logvar.exp()).mean()
    (reconstruction.abs().mean() + kl_divergence).backward()
    assert all(parameter.grad is not None for parameter in model.parameters())


def test_unet_128_output_does_not_depend_on_other_slices_in_eval_mode():
    model = small_model("unet_128").eval()
    batch = slices(128, batch=3)
    with torch.no_grad():
        together = model(batch)
        alone = model(batch[1:2])
    torch.testing.assert_close(together[1:2], alone)


def test_patchgan_gives_30x30_logits_for_a_256_slice():
    model = small_model("patchgan", in_channels=2)
    output = model(slices(256, channels=2))
    assert output.shape == (2, 1, 30, 30)
    assert output.min() < 0 < output.max()  # logits, no sigmoid


def test_patchgan_spectral_norm_parametrizes_every_convolution():
    model = small_model("patchgan", spectral_norm=True, norm="none")
    convolutions = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convolutions) == 5
    for conv in convolutions:
        assert parametrize.is_parametrized(conv, "weight")
        largest_singular_value = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
        assert largest_singular_value == pytest.approx(1.0, abs=0.1)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) for m in model.modules())
    assert model(slices(256)).shape == (2, 1, 30, 30)


def test_patchgan_without_spectral_norm_has_plain_weights():
    model = small_model("patchgan")
    assert not any(parametrize.is_parametrized(m) for m in model.modules())


def test_spectral_norm_with_a_norm_layer_is_rejected():
    with pytest.raises(InputError, match="norm='none'"):
        build_model("patchgan", spectral_norm=True)


def test_unknown_model_name_lists_valid_names():
    with pytest.raises(InputError) as caught:
        build_model("unet_512")
    message = str(caught.value)
    assert "'unet_512'" in message and "unet_256" in message and "patchgan" in message
    assert "\n" not in message
    with pytest.raises(InputError, match="unet_512"):
        default_config("unet_512")


def test_unknown_config_key_lists_valid_keys():
    with pytest.raises(InputError) as caught:
        build_model("unet_256", ngf=8, use_dropout=False)
    message = str(caught.value)
    assert "'use_dropout'" in message and "dropout" in message and "ngf" in message
    assert "\n" not in message


def test_option_implied_by_the_name_is_not_configurable():
    with pytest.raises(InputError, match="num_downs"):
        build_model("unet_256", num_downs=7)


@pytest.mark.parametrize("name, key, value", [
    ("unet_256", "ngf", "64"),
    ("unet_256", "dropout", 1),
    ("resnet_9blocks", "ngf", 64.0),
    ("unet_256", "norm", "layer"),
    ("resnet_9blocks", "ngf", 0),
    ("vae", "image_size", 200),
    ("unit", "n_shared", 0),
    ("baseline", "hidden_channels", [32, "16"]),
])
def test_bad_option_values_are_rejected(name, key, value):
    with pytest.raises(InputError, match=key if key != "norm" else "layer"):
        build_model(name, **{key: value})


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_default_config_round_trips_through_json(name):
    config = json.loads(json.dumps(default_config(name)))
    assert config == default_config(name)
    torch.manual_seed(0)
    model = build_model(name, **config)
    assert model.registry_name == name
    assert model.config == config
    assert json.loads(json.dumps(model.config)) == config


def test_model_config_records_overrides_and_rebuilds_the_same_network():
    model = small_model("unet_256", in_channels=3, dropout=False)
    assert model.config == {**default_config("unet_256"), "ngf": 4, "in_channels": 3,
                            "dropout": False}
    rebuilt = build_model(model.registry_name, **model.config)
    rebuilt.load_state_dict(model.state_dict())  # same parameter names and shapes


def test_default_config_is_a_fresh_copy():
    config = default_config("baseline")
    config["hidden_channels"].append(8)
    config["in_channels"] = 5
    assert default_config("baseline") == {"in_channels": 1, "out_channels": 1,
                                          "hidden_channels": [32, 16]}


def test_unet_is_deterministic_in_eval_mode_despite_dropout():
    model = small_model("unet_256", dropout=True)
    assert any(isinstance(m, nn.Dropout) for m in model.modules())
    x = slices(256)
    with torch.no_grad():
        model.train()
        assert not torch.equal(model(x), model(x))  # dropout is live in training
        model.eval()
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name, dropout_layers", [("unet_128", 2), ("unet_256", 3)])
def test_unet_dropout_is_only_in_the_innermost_decoder_levels(name, dropout_layers):
    model = small_model(name)
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == dropout_layers
    assert sum(isinstance(m, nn.Dropout) for m in model.encoder.modules()) == 0
    no_dropout = small_model(name, dropout=False)
    assert not any(isinstance(m, nn.Dropout) for m in no_dropout.modules())


def test_vae_forward_is_deterministic_and_samples_vary():
    model = small_model("vae").eval()
    x = slices(256)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
        mu, logvar = model.encode(x)
        assert mu.shape == logvar.shape == (2, 128)
        torch.testing.assert_close(model(x), model.decode(mu))
        samples = model.sample(x, 4, generator=torch.Generator().manual_seed(3))
        again = model.sample(x, 4, generator=torch.Generator().manual_seed(3))
    assert samples.shape == (4, 2, 1, 256, 256)
    assert samples.abs().max() <= 1.0
    assert samples.std(dim=0).mean() > 0  # a non-zero uncertainty map
    torch.testing.assert_close(samples, again)  # reproducible with a seeded generator


def test_vae_reparameterise_draws_around_the_mean():
    mu = torch.full((2000, 8), 3.0)
    logvar = torch.full((2000, 8), 2 * torch.log(torch.tensor(0.5)).item())
    z = build_model("vae", nf=4).reparameterise(mu, logvar, torch.Generator().manual_seed(0))
    assert z.mean().item() == pytest.approx(3.0, abs=0.02)
    assert z.std().item() == pytest.approx(0.5, abs=0.02)


def test_vae_at_128_has_five_blocks_and_rejects_other_sizes():
    model = small_model("vae", image_size=128).eval()
    assert sum(isinstance(m, nn.Conv2d) for m in model.encoder) == 5
    with torch.no_grad():
        assert model(slices(128)).shape == (2, 1, 128, 128)
    with pytest.raises(InputError, match="128x128"):
        model(slices(256))


def test_unit_translates_in_both_directions_through_shared_layers():
    model = small_model("unit", in_channels=2, out_channels=1).eval()
    calls = []
    model.shared_encoder.register_forward_hook(lambda *_: calls.append("shared_encoder"))
    model.shared_decoder.register_forward_hook(lambda *_: calls.append("shared_decoder"))
    a, b = slices(256, channels=2), slices(256, channels=1)
    with torch.no_grad():
        a_to_b = model.translate(a, "a")
        b_to_a = model.translate(b, "b")
        assert calls == ["shared_encoder", "shared_decoder"] * 2
        torch.testing.assert_close(model(a), a_to_b, rtol=0, atol=0)
        latent = model.encode(a, "a")
    assert a_to_b.shape == (2, 1, 256, 256)
    assert b_to_a.shape == (2, 2, 256, 256)
    assert latent.shape == (2, 16, 64, 64)  # ngf * 4 channels at a quarter of the size


def test_unit_latent_sample_adds_unit_noise():
    mean = torch.zeros(4, 16, 32, 32)
    z = small_model("unit").sample_latent(mean, torch.Generator().manual_seed(0))
    assert z.std().item() == pytest.approx(1.0, abs=0.05)


def test_unit_unknown_domain_is_rejected():
    model = small_model("unit")
    with pytest.raises(InputError, match="'c'"):
        model.encode(slices(256), "c")
    with pytest.raises(InputError, match="'c'"):
        model.translate(slices(256), "c")


@pytest.mark.parametrize("name, expected_millions", [
    ("unet_256", 54.41),  # pix2pix generator, 54.408 M with 1 channel
    ("unet_128", 41.82),
    ("resnet_9blocks", 11.36),  # CycleGAN generator, 11.366 M there (it adds redundant biases)
    ("resnet_6blocks", 7.82),
])
def test_default_parameter_counts_match_the_literature(name, expected_millions):
    assert parameter_count(build_model(name)) / 1e6 == pytest.approx(expected_millions, rel=1e-3)


def test_conditional_patchgan_parameter_count_matches_the_literature():
    # 2.769 M for pix2pix's 6-channel (RGB input + RGB output) discriminator.
    assert parameter_count(build_model("patchgan", in_channels=6)) / 1e6 == pytest.approx(
        2.769, rel=1e-3)


def test_baseline_is_a_few_hundred_parameters_of_1x1_convolutions():
    model = build_model("baseline")
    assert parameter_count(model) == 609
    assert all(m.kernel_size == (1, 1) for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("name, shape", [
    ("unet_256", (1, 1, 200, 200)),
    ("unet_256", (1, 1, 128, 128)),
    ("unet_128", (1, 1, 128, 100)),
    ("resnet_9blocks", (1, 1, 250, 256)),
    ("vae", (1, 1, 128, 128)),
    ("unit", (1, 1, 254, 256)),
    ("patchgan", (1, 1, 16, 16)),
    ("resunet", (1, 1, 136, 128)),  # not a multiple of 16
    ("unet_256", (1, 3, 256, 256)),  # wrong channel count
    ("baseline", (1, 256, 256)),  # missing channel axis
])
def test_wrong_input_shape_gives_clear_error(name, shape):
    model = small_model(name)
    with pytest.raises(InputError) as caught:
        model(torch.zeros(shape))
    message = str(caught.value)
    assert str(tuple(shape)) in message or f"{shape[-2]}x{shape[-1]}" in message
    assert "\n" not in message


def test_init_weights_draws_from_normal_0_002():
    model = small_model("unet_256", ngf=8)
    weights = torch.cat([m.weight.flatten() for m in model.modules()
                         if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))])
    biases = [m.bias for m in model.modules() if getattr(m, "bias", None) is not None
              and isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    norm_scales = torch.cat([m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d)])
    assert weights.mean().item() == pytest.approx(0.0, abs=1e-3)
    assert weights.std().item() == pytest.approx(0.02, rel=0.05)
    assert all(torch.count_nonzero(bias) == 0 for bias in biases)
    assert norm_scales.mean().item() == pytest.approx(1.0, abs=0.01)


def test_init_weights_follows_the_global_seed():
    torch.manual_seed(5)
    first = build_model("baseline").state_dict()
    torch.manual_seed(5)
    second = build_model("baseline").state_dict()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0)


def test_init_weights_other_kinds_and_unknown_kind():
    model = small_model("resnet_6blocks")
    init_weights(model, kind="kaiming")
    first_conv = model.layers[0]
    expected_std = (2 / (first_conv.in_channels * 7 * 7)) ** 0.5
    assert first_conv.weight.std().item() == pytest.approx(expected_std, rel=0.3)
    with pytest.raises(InputError, match="'uniform'"):
        init_weights(model, kind="uniform")


@pytest.mark.parametrize("size", [(128, 128), (160, 96), (256, 256)])
def test_resunet_accepts_any_multiple_of_its_downsampling_factor(size):
    model = small_model("resunet").eval()
    with torch.no_grad():
        output = model(torch.rand(1, 1, *size) * 2 - 1)
    assert output.shape == (1, 1, *size)
    assert output.abs().max() <= 1.0


def test_resunet_in_eval_mode_treats_a_crop_like_the_whole_slice_away_from_its_border():
    # Batch norm uses running statistics in eval mode, so the centre of a crop depends only on
    # the pixels around it: what is learnt on crops carries over to whole slices.
    # (Two levels: a receptive-field radius of about 27 pixels, less than the 32-pixel margin.)
    model = small_model("resunet", levels=2).eval()
    image = slices(256, batch=1)
    with torch.no_grad():
        whole = model(image)
        crop = model(image[..., 64:192, 64:192])
    assert torch.allclose(whole[..., 96:160, 96:160], crop[..., 32:96, 32:96], atol=1e-5)


def test_resunet_is_he_initialised():
    model = build_model("resunet", ngf=8)
    conv = model.encoder[0][0].body[0][0]
    fan_in = conv.in_channels * 9
    assert conv.weight.std().item() == pytest.approx((2.0 / fan_in) ** 0.5, rel=0.15)
