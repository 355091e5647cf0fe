"""Training recipe options (those of the shipped resunet recipes): crops, site augmentation, the SSIM
loss, weight averaging, a CPU budget, fine-tuning from a checkpoint, a fixed split file; and the
study helpers built on them."""

import json

import pytest
import torch

from MRISynthesisLib.checkpoint import load_checkpoint
from MRISynthesisLib.errors import InputError
from Training.cli import train
from Training.config import ConfigError, load_config
from Training.data import AugmentConfig, augment_pair
from Training.data.datasets import random_crop
from Training.losses import ssim_loss


def _slice_with_brain(size=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(1, size, size)
    mask[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    source = torch.where(mask > 0, torch.rand(1, size, size, generator=generator) * 1.6 - 0.8, -torch.ones(1, size, size))
    target = torch.where(mask > 0, torch.rand(1, size, size, generator=generator) * 1.6 - 0.8, -torch.ones(1, size, size))
    return source, target, mask


def test_random_crops_lie_inside_the_slice_and_mostly_show_brain():
    source, target, mask = _slice_with_brain(64)
    on_brain = 0
    for seed in range(50):
        (s, t), m = random_crop([source, target], mask, 16, torch.Generator().manual_seed(seed))
        assert s.shape == t.shape == m.shape == (1, 16, 16)
        on_brain += int(m[0, 8, 8] > 0)
    assert on_brain >= 35  # centred on a brain pixel with probability 0.9


def test_crop_keeps_source_target_and_mask_aligned():
    _, _, mask = _slice_with_brain(64)
    generator = torch.Generator().manual_seed(2)
    source, target = torch.rand(1, 64, 64, generator=generator), torch.rand(1, 64, 64, generator=generator)
    (s, t), m = random_crop([source, target], mask, 32, torch.Generator().manual_seed(3))
    rows, cols = torch.nonzero((source[0] == s[0, 0, 0]) & (target[0] == t[0, 0, 0]), as_tuple=True)
    assert len(rows) == 1  # the crop's corner pixel is found at one place in both images
    r, c = int(rows[0]), int(cols[0])
    assert torch.equal(source[:, r:r + 32, c:c + 32], s) and torch.equal(mask[:, r:r + 32, c:c + 32], m)


def test_whole_slice_when_crop_size_is_zero_or_too_large():
    source, target, mask = _slice_with_brain(64)
    for size in (0, 64, 80):
        (s, t), m = random_crop([source, target], mask, size, torch.Generator().manual_seed(0))
        assert s is source and m is mask


def test_strong_augmentation_changes_only_the_source_and_keeps_the_background():
    source, target, mask = _slice_with_brain(64)
    basic = augment_pair(source, target, mask, AugmentConfig.preset("basic"), torch.Generator().manual_seed(5))
    strong = augment_pair(source, target, mask, AugmentConfig.preset("strong"), torch.Generator().manual_seed(5))
    again = augment_pair(source, target, mask, AugmentConfig.preset("strong"), torch.Generator().manual_seed(5))
    # same geometric transform and untouched target: the site variation only alters the source
    assert torch.equal(strong[1], basic[1]) and torch.equal(strong[2], basic[2])
    assert all(torch.equal(a, b) for a, b in zip(strong, again))  # reproducible from the generator
    changed = [not torch.equal(augment_pair(source, target, mask, AugmentConfig.preset("strong"),
                                            torch.Generator().manual_seed(seed))[0],
                               augment_pair(source, target, mask, AugmentConfig.preset("basic"),
                                            torch.Generator().manual_seed(seed))[0]) for seed in range(10)]
    assert sum(changed) >= 8
    out = strong[0]
    assert out.min() >= -1.0 and out.max() <= 1.0
    background = basic[0] <= -1.0 + 1e-6
    assert torch.all(out[background] == -1.0)


def test_thick_slice_simulation_blurs_along_one_axis_only():
    from Training.data.augment import _down_up

    stripes = torch.zeros(1, 64, 64)
    stripes[:, ::2, :] = 1.0  # horizontal stripes: detail along the rows axis only
    blurred_rows = _down_up(stripes, (4.0, 1.0))
    blurred_cols = _down_up(stripes, (1.0, 4.0))
    assert blurred_rows.std() < 0.1 * stripes.std()  # stripes averaged away
    assert torch.allclose(blurred_cols, stripes, atol=1e-5)  # nothing varies along the columns


def test_switching_off_every_site_part_leaves_the_basic_augmentation():
    import dataclasses

    from Training.data.augment import PARTS

    source, target, mask = _slice_with_brain(64)
    site_parts = ("curve", "jitter", "blur", "lowres", "thick", "noise")
    # gamma range and bias strength of the basic preset, every site part off: same draws, same result
    stripped = dataclasses.replace(AugmentConfig.preset("strong"), gamma_range=(0.8, 1.25), bias_strength=0.2,
                                   off=site_parts)
    for seed in range(5):
        basic = augment_pair(source, target, mask, AugmentConfig.preset("basic"), torch.Generator().manual_seed(seed))
        other = augment_pair(source, target, mask, stripped, torch.Generator().manual_seed(seed))
        assert all(torch.equal(a, b) for a, b in zip(basic, other))
    # one part off changes the source of some draws but never the geometry or the target
    one_off = dataclasses.replace(AugmentConfig.preset("strong"), off=("curve",))
    changed = 0
    for seed in range(10):
        strong = augment_pair(source, target, mask, AugmentConfig.preset("strong"), torch.Generator().manual_seed(seed))
        other = augment_pair(source, target, mask, one_off, torch.Generator().manual_seed(seed))
        assert torch.equal(strong[1], other[1]) and torch.equal(strong[2], other[2])
        changed += not torch.equal(strong[0], other[0])
    assert 2 <= changed <= 9  # the curve is drawn with probability 0.5
    assert all(AugmentConfig.preset("strong").uses(part) for part in PARTS)
    assert not any(AugmentConfig.preset("basic").uses(part) for part in site_parts)
    nothing = dataclasses.replace(AugmentConfig.preset("basic"), off=PARTS)
    out = augment_pair(source, target, mask, nothing, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(out, (source, target, mask)))


def test_augmentation_parts_are_switched_off_by_config_and_unknown_parts_refused():
    from Training.config import AUGMENT_PARTS
    from Training.data.augment import PARTS
    from Training.trainers.data_setup import _augmentation

    assert AUGMENT_PARTS == PARTS
    config = load_config(None, ["data.augment_preset=strong", 'data.augment_off=["thick", "noise"]'])
    augment = _augmentation(config)
    assert not augment.uses("thick") and not augment.uses("noise") and augment.uses("blur")
    with pytest.raises(ConfigError, match="augment_off names unknown parts sharpen"):
        load_config(None, ['data.augment_off=["sharpen"]'])


def test_unknown_augmentation_preset_is_refused():
    with pytest.raises(ConfigError, match="augment_preset"):
        load_config(None, ["data.augment_preset=extreme"])


def test_ssim_loss_is_zero_for_identical_images_and_grows_with_noise():
    _, target, mask = _slice_with_brain(64)
    generator = torch.Generator().manual_seed(1)
    noisy = (target + 0.2 * torch.randn(target.shape, generator=generator)).clamp(-1, 1)
    very_noisy = (target + 0.6 * torch.randn(target.shape, generator=generator)).clamp(-1, 1)
    assert ssim_loss(target[None], target[None]).item() == pytest.approx(0.0, abs=1e-6)
    assert 0 < ssim_loss(noisy[None], target[None], mask[None]) < ssim_loss(very_noisy[None], target[None], mask[None])


def test_masked_ssim_loss_ignores_pixels_outside_the_mask():
    _, target, mask = _slice_with_brain(64)
    outside = target.clone()
    outside[mask == 0] = 1.0  # changes only where the mask is 0 (and, through the window, at its border)
    inner = torch.zeros_like(mask)
    inner[:, 24:40, 24:40] = 1  # more than the window radius away from any changed pixel
    assert ssim_loss(outside[None], target[None], inner[None]).item() == pytest.approx(0.0, abs=1e-6)
    assert ssim_loss(outside[None], target[None]).item() > 0.01


def test_ssim_loss_backpropagates():
    _, target, mask = _slice_with_brain(32)
    prediction = torch.zeros_like(target)[None].requires_grad_(True)
    ssim_loss(prediction, target[None], mask[None]).backward()
    assert prediction.grad.abs().sum() > 0


V2 = {"model__generator": "resunet", "model__generator_options": "{ngf: 4, levels: 2}", "data__crop_size": 32,
      "data__augment": "true", "data__augment_preset": "strong", "loss__foreground_l1": "true",
      "loss__ssim": 1.0, "train__ema_decay": 0.9}


def _records(run_dir, kind):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


@pytest.mark.realdata
@pytest.mark.slow
def test_recipe_trains_on_crops_and_exports_the_weight_average(manifest, cache_root, tmp_path, tiny_overrides):
    config = load_config(None, tiny_overrides(manifest, cache_root, tmp_path, "supervised", name="v2",
                                              **V2, validation__raw_too="true"))
    summary = train(config, log=lambda *a: None)
    run_dir = tmp_path / "v2"
    losses = _records(run_dir, "train")
    assert {"loss_l1", "loss_ssim"} <= set(losses[0])
    assert len(_records(run_dir, "val")) == 2 and len(_records(run_dir, "val_raw")) == 2
    assert _records(run_dir, "val")[-1]["train_cpu_minutes"] > 0
    model, metadata = load_checkpoint(run_dir / "checkpoints" / "last-t1-to-t2.safetensors")
    assert metadata.architecture == "resunet" and metadata.slice_size == 64  # trained on 32 px crops
    state = torch.load(run_dir / "train_state.pt", weights_only=True)
    exported = model.state_dict()
    average, raw = state["ema"]["g"], state["networks"]["g"]
    name = "head.0.weight"
    assert torch.allclose(exported[name].float(), average[name].float(), atol=1e-3)
    assert not torch.allclose(average[name], raw[name])
    assert summary["train_cpu_hours"] > 0


@pytest.mark.realdata
def test_cpu_budget_stops_training_then_validates_and_exports(manifest, cache_root, tmp_path, tiny_overrides):
    config = load_config(None, tiny_overrides(manifest, cache_root, tmp_path, "supervised", name="budget", **V2,
                                              train__epochs=50, train__max_cpu_minutes=0.0001))
    summary = train(config, log=lambda *a: None)
    assert summary["steps_done"] == 1 and summary["epochs_done"] == 1
    assert (tmp_path / "budget" / "checkpoints" / "last-t1-to-t2.safetensors").is_file()


@pytest.mark.realdata
@pytest.mark.slow
def test_pix2pix_fine_tunes_from_a_supervised_checkpoint(manifest, cache_root, tmp_path, tiny_overrides):
    supervised = load_config(None, tiny_overrides(manifest, cache_root, tmp_path, "supervised", name="sup", **V2,
                                                  train__epochs=1))
    train(supervised, log=lambda *a: None)
    checkpoint = tmp_path / "sup" / "checkpoints" / "last-t1-to-t2.safetensors"
    start, _ = load_checkpoint(checkpoint)
    fine = load_config(None, tiny_overrides(manifest, cache_root, tmp_path, "pix2pix", name="fine", **V2,
                                            model__init_from=str(checkpoint), train__epochs=1,
                                            train__steps_per_epoch=1, optim__lr=1e-12))
    train(fine, log=lambda *a: None)
    tuned, _ = load_checkpoint(tmp_path / "fine" / "checkpoints" / "last-t1-to-t2.safetensors")
    # one step at a vanishing learning rate: the generator is still the supervised one
    for key, value in start.state_dict().items():
        if value.is_floating_point() and "running" not in key:
            assert torch.allclose(value, tuned.state_dict()[key], atol=1e-3), key
    wrong = load_config(None, tiny_overrides(manifest, cache_root, tmp_path, "pix2pix", name="wrong",
                                             **{**V2, "model__generator_options": "{ngf: 8, levels: 2}"},
                                             model__init_from=str(checkpoint)))
    with pytest.raises(InputError, match="does not match"):
        train(wrong, log=lambda *a: None)


def _row(subject, mae, psnr, ssim):
    texture = {"real": {"contrast": 2.0, "dissimilarity": 1.0}, "synthetic": {"contrast": 1.0, "dissimilarity": 0.5}}
    return {"subject": subject, "source": "X", "mask": {"mae": mae, "mse": mae ** 2, "psnr": psnr, "ssim": ssim, "mi_bits": 1.0},
            "texture": {"brain": texture, "lesion": None}, "slices_per_second": 3.0}


def test_final_scoring_names_every_subject_and_metric_that_does_not_beat_a_baseline():
    from studies.final_scoring import _beats, markdown

    rows = {"v2": [_row("a", 0.05, 20.0, 0.80), _row("b", 0.10, 15.0, 0.60)]}
    baselines = {"inverted": {"a": _row("a", 0.10, 15.0, 0.70), "b": _row("b", 0.09, 16.0, 0.50)}}
    verdict = _beats(rows, baselines)
    assert verdict == {"v2": ["b mae vs inverted", "b psnr vs inverted"]}
    text = markdown({"direction": "t1-to-t2", "split": "test", "rows": rows, "baselines": baselines,
                     "beats_baselines": verdict})
    assert "| v2 | 0.0750 | 17.50 | 0.700 | no: b mae vs inverted, b psnr vs inverted |" in text
    assert "| real | 2.000 | 1.000 |" in text and "| v2 | 1.000 | 0.500 |" in text
    assert _beats(rows, {"inverted": {"c": _row("c", 0.1, 15.0, 0.7)}}) == {"v2": None}  # nothing to compare


def test_resunet_without_normalisation_starts_each_residual_block_as_the_identity():
    from MRISynthesisLib.models import build_model
    from MRISynthesisLib.models.resunet import _Residual

    model = build_model("resunet", ngf=4, levels=2, norm="none").eval()
    blocks = [m for m in model.modules() if isinstance(m, _Residual)]
    assert len(blocks) == 5  # two encoder levels, the bottleneck, two decoder levels
    for block in blocks:
        assert torch.count_nonzero(block.body[-2].weight) == 0
        x = torch.rand(1, block.body[-2].weight.shape[0], 8, 8)
        assert torch.equal(block(x.clone()), x)  # ReLU(x + 0) of a non-negative input
    with_batch_norm = build_model("resunet", ngf=4, levels=2, norm="batch")
    assert all(torch.count_nonzero(m.body[-2].weight) == 0 for m in with_batch_norm.modules()
               if isinstance(m, _Residual)) is False  # batch norm keeps the plain He initialisation
    out = model(torch.rand(2, 1, 32, 32) * 2 - 1)
    assert out.shape == (2, 1, 32, 32) and torch.isfinite(out).all() and 0.01 < float(out.std()) < 0.9


@pytest.mark.realdata
@pytest.mark.slow
def test_split_file_fixes_which_subjects_train_and_validate(manifest, cache_root, tmp_path, tiny_overrides):
    import csv

    with open(manifest, newline="") as stream:
        ids = sorted(row[0] for row in list(csv.reader(stream))[1:])
    # both assignments: each run must follow its file, whatever data.split would have drawn
    for train_id, val_id in ((ids[0], ids[1]), (ids[1], ids[0])):
        split_file = tmp_path / f"split-{train_id}.json"
        split_file.write_text(json.dumps({"train": [train_id], "val": [val_id], "test": []}))
        name = f"fixed-{train_id}"
        config = load_config(None, tiny_overrides(manifest, cache_root, tmp_path, "supervised", name=name, **V2,
                                                  train__epochs=1, train__steps_per_epoch=1,
                                                  data__split_file=str(split_file)))
        train(config, log=lambda *a: None)
        written = json.loads((tmp_path / name / "split.json").read_text())
        assert written["train"] == [train_id] and written["val"] == [val_id]
    missing = load_config(None, tiny_overrides(manifest, cache_root, tmp_path, "supervised", name="missing", **V2,
                                               data__split_file=str(tmp_path / "nope.json")))
    with pytest.raises(InputError, match="split file not found"):
        train(missing, log=lambda *a: None)


def test_other_sites_split_validates_on_one_training_subject_of_each_other_source(tmp_path):
    from types import SimpleNamespace

    from studies.recipe_ablation import write_other_sites_split

    sources = {"A1": "A", "A2": "A", "A3": "A", "B1": "B", "B2": "B", "C1": "C", "D1": "D", "D2": "D", "D3": "D"}
    by_id = {i: SimpleNamespace(id=i, source=s) for i, s in sources.items()}
    split = {"train": ["A1", "A2", "B1", "C1", "D1", "D2"], "val": ["A3"], "test": ["B2", "D3"]}
    path = write_other_sites_split(split, by_id, tmp_path / "split.json")
    written = json.loads(path.read_text())
    # B and D have another subject (a test one), C has one subject only, A is the validation source
    assert written["val"] == ["B1", "D1"]
    assert sorted(written["train"]) == ["A1", "A2", "A3", "C1", "D2"]
    assert written["test"] == ["B2", "D3"]


def test_augmentation_ablation_rows_switch_off_one_part_each_and_are_valid_configs():
    from studies import recipe_ablation as ingredients

    rows = {name: extra for name, _, extra in ingredients.INGREDIENTS}
    parts = [name.removeprefix("strong_no_") for name in rows if name.startswith("strong_no_")]
    assert sorted(parts) == sorted(["gamma", "bias", "curve", "jitter", "blur", "lowres", "thick", "noise"])
    for part in parts:
        extra = rows[f"strong_no_{part}"]
        assert extra["data.augment_off"] == [part]
        assert {k: v for k, v in extra.items() if k != "data.augment_off"} == rows["no_norm_strong"]
        config = load_config(None, [f"{key}={json.dumps(value)}" for key, value in extra.items()])
        assert config.data.augment_off == [part] and config.data.augment_preset == "strong"
    assert rows["strong_seed1"]["seed"] == 1


def test_the_weight_average_averages_batch_norm_statistics_with_the_weights():
    """Batch norm's running mean and variance are averaged like the weights (not copied from the
    current network, which paired the averaged weights with other statistics and shifted a
    unet_256's output); its integer batch counter is copied."""
    from types import SimpleNamespace

    from Training.trainers.base import Trainer

    def network():
        return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))

    live, average = network(), network()
    with torch.no_grad():
        live[1].running_mean.fill_(1.0)
        live[1].running_var.fill_(3.0)
        live[1].num_batches_tracked.fill_(7)
        live[0].weight.fill_(2.0)
        average[0].weight.fill_(0.0)
    fake = SimpleNamespace(ema={"g": average}, networks={"g": live}, global_step=10**6,
                           config=SimpleNamespace(train=SimpleNamespace(ema_decay=0.9)))
    Trainer.update_ema(fake)
    assert torch.allclose(average[0].weight, torch.full_like(average[0].weight, 0.2))
    assert torch.allclose(average[1].running_mean, torch.full((2,), 0.1))  # 0.9 * 0 + 0.1 * 1
    assert torch.allclose(average[1].running_var, torch.full((2,), 1.2))  # 0.9 * 1 + 0.1 * 3
    assert int(average[1].num_batches_tracked) == 7
    for _ in range(200):
        Trainer.update_ema(fake)
    assert torch.allclose(average[1].running_var, live[1].running_var, atol=1e-6)
