"""Training speed (images/s) of every model family at 256x256 on this machine.

Runs the real trainers (``Training.trainers``: the same train_step, optimisers, autocast and
schedule as ``mrisynthesis train``) on random 256x256 slices held in memory, so only compute is
measured (no data loading, no validation). Networks are the literature defaults unless
``--ngf`` is given: pix2pix/supervised unet_256, cyclegan resnet_9blocks, vae, unit, baseline.

    python benchmarks/bench_training.py                 # all families, batch 1, 3 timed steps
    python benchmarks/bench_training.py --families pix2pix cyclegan --batch-size 4 --ngf 32
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


def images_per_second(family, args):
    overrides = [f"family={family}", "device=cpu", f"data.batch_size={args.batch_size}", "data.slice_size=256",
                 f"train.precision={args.precision}", f"train.channels_last={str(args.channels_last).lower()}"]
    if args.ngf:
        key = "nf" if family == "vae" else "ngf"
        overrides.append(f"model.generator_options={{{key}: {args.ngf}}}") if family != "baseline" else None
    config = load_config(None, overrides)
    batch = {"source": torch.rand(args.batch_size, 1, 256, 256) * 2 - 1,
             "target": torch.rand(args.batch_size, 1, 256, 256) * 2 - 1}
    with tempfile.TemporaryDirectory() as run_dir:
        data = RunData(RandomSlices(args.batch_size * 4, 256), None, {"train": [], "val": [], "test": []})
        trainer = TRAINERS[family](config, run_dir, data, DistributedContext())
        batch = trainer.to_device(batch)
        for _ in range(args.warmup):
            trainer.train_step(batch)
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step(batch)
            trainer.scaler.update()
        seconds = time.perf_counter() - start
    params = sum(p.numel() for n in trainer.networks.values() for p in n.parameters())
    return args.steps * args.batch_size / seconds, params


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--ngf", type=int, default=0, help="generator width (0 = literature default)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"training images/s at 256x256, batch {args.batch_size}, {args.precision}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'family':<12}{'parameters':>14}{'images/s':>12}")
    for family in args.families:
        rate, params = images_per_second(family, args)
        print(f"{family:<12}{params:>14,}{rate:>12.3f}", flush=True)


if __name__ == "__main__":
    main()
