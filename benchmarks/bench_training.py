"""Training speed (images/s) of every model family at 256x256, fp32 vs bf16 + channels_last, one run.

Runs the real trainers (``Training.trainers``: the same train_step, optimisers, autocast and
schedule as ``mrisynthesis train``) on random 256x256 slices held in memory, so only compute is
measured (no data loading, no validation). Networks are the literature defaults unless
``--ngf`` is given: pix2pix/supervised unet_256, cyclegan resnet_9blocks, vae, unit, baseline.
By default every family is measured in fp32 and in bf16 autocast + channels_last, at batch 1
and 4, side by side in one run (the machine is shared: compare the ratios), as images per CPU
second (wall-clock in brackets).

    python benchmarks/bench_training.py                               # all families, fp32 and bf16, batch 1 and 4
    python benchmarks/bench_training.py --families pix2pix --ngf 64 --batch-sizes 1 --steps 2
    python benchmarks/bench_training.py --modes fp32                  # one precision only
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from Training.config import FAMILIES, load_config  # noqa: E402
from Training.distributed import DistributedContext  # noqa: E402
from Training.trainers import TRAINERS  # noqa: E402
from Training.trainers.data_setup import RunData  # noqa: E402


class RandomSlices(torch.utils.data.Dataset):
    def __init__(self, n, size):
        generator = torch.Generator().manual_seed(0)
        self.source = torch.rand(n, 1, size, size, generator=generator) * 2 - 1
        self.target = torch.rand(n, 1, size, size, generator=generator) * 2 - 1

    def set_epoch(self, epoch):
        pass

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        return {"source": self.source[i], "target": self.target[i]}


MODES = {"fp32": ("fp32", False), "fp32-cl": ("fp32", True), "bf16": ("bf16", True)}  # precision, channels_last


def images_per_second(family, args, batch_size, mode):
    precision, channels_last = MODES[mode]
    overrides = ["device=cpu", f"data.batch_size={batch_size}",
                 f"train.precision={precision}", f"train.channels_last={str(channels_last).lower()}"]
    if args.config:  # a recipe as it trains: its network, loss and crop size
        config = load_config(args.config, overrides)
    else:
        overrides += [f"family={family}", "data.slice_size=256"]
        if args.ngf and family != "baseline":
            key = "nf" if family == "vae" else "ngf"
            overrides.append(f"model.generator_options={{{key}: {args.ngf}}}")
        config = load_config(None, overrides)
    size = int(config.data.crop_size or config.data.slice_size)
    generator = torch.Generator().manual_seed(1)
    channels = int(getattr(config, "in_channels", 1))
    grid = torch.linspace(-1, 1, size)
    disk = ((grid[:, None] ** 2 + grid[None, :] ** 2) < 0.6).to(torch.uint8)  # a brain-sized foreground
    batch = {"source": torch.rand(batch_size, channels, size, size, generator=generator) * 2 - 1,
             "target": torch.rand(batch_size, 1, size, size, generator=generator) * 2 - 1,
             "mask": disk.expand(batch_size, 1, size, size).contiguous()}
    with tempfile.TemporaryDirectory() as run_dir:
        data = RunData(RandomSlices(batch_size * 4, size), None, {"train": [], "val": [], "test": []})
        trainer = TRAINERS[config.family](config, run_dir, data, DistributedContext())
        batch = trainer.to_device(batch)
        for _ in range(args.warmup):
            trainer.train_step(batch)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
            trainer.train_step(batch)
            trainer.scaler.update()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    params = sum(p.numel() for n in trainer.networks.values() for p in n.parameters())
    images = args.steps * batch_size
    return images / cpu, images / wall, params


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--config", default=None, help="a training recipe (e.g. configs/supervised-v4.yaml): its "
                        "family, network, loss and crop size instead of --families at 256x256")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the modes interleaved this many times")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES),
                        help="fp32, fp32-cl = fp32 + channels_last, bf16 = bf16 autocast + channels_last "
                             "(default: all)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--ngf", type=int, default=0, help="generator width (0 = literature default)")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from MRISynthesisLib.device import cpu_has_native_bf16

    if args.config:
        return recipe(args)
    print(f"training images per CPU second (wall-clock in brackets) at 256x256, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, native bf16: {'yes' if cpu_has_native_bf16() else 'no'}")
    columns = [(b, m) for b in args.batch_sizes for m in args.modes]
    print(f"{'family':<12}{'parameters':>12}" + "".join(f"{f'b{b} {m}':>20}" for b, m in columns)
          + "".join(f"{f'b{b} bf16/fp32':>14}" for b in args.batch_sizes if len(args.modes) == 2))
    for family in args.families:
        rates, params = {}, 0
        for b, m in columns:
            cpu_rate, wall_rate, params = images_per_second(family, args, b, m)
            rates[b, m] = (cpu_rate, wall_rate)
        line = f"{family:<12}{params:>12,}" + "".join(f"{rates[c][0]:>11.3f} ({rates[c][1]:>6.3f})" for c in columns)
        if len(args.modes) == 2:
            line += "".join(f"{rates[b, 'bf16'][0] / rates[b, 'fp32'][0]:>13.2f}x" for b in args.batch_sizes)
        print(line, flush=True)


def recipe(args):
    """One recipe's training step in each mode, interleaved over ``--rounds``; ratios to the first mode."""
    import statistics

    config = load_config(args.config, [])
    batch_size = args.batch_sizes[0] if args.batch_sizes != [1, 4] else int(config.data.batch_size)
    size = int(config.data.crop_size or config.data.slice_size)
    print(f"{args.config}: {config.family}, {config.model.generator} {config.model.generator_options}, batch "
          f"{batch_size} of {size}x{size}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"{args.steps} steps per measurement, {args.rounds} interleaved rounds (images per wall-clock second)")
    rates = {mode: [] for mode in args.modes}
    for _ in range(args.rounds):
        for mode in args.modes:
            rates[mode].append(images_per_second(config.family, args, batch_size, mode)[1])
    first = args.modes[0]
    for mode in args.modes:
        ratios = [r / f for r, f in zip(rates[mode], rates[first])]
        print(f"{mode:<10}{statistics.median(rates[mode]):>8.2f} images/s (min {min(rates[mode]):.2f}, max "
              f"{max(rates[mode]):.2f}); vs {first}: {statistics.median(ratios):.2f}x "
              f"({min(ratios):.2f}-{max(ratios):.2f})", flush=True)


if __name__ == "__main__":
    main()
