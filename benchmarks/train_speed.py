"""Training throughput of the course U-Net: the course text's data pipeline against ours, plus sampling time.

Seed pipeline (as in the original assignment): a Dataset of PIL images with torchvision's
``ToTensor() -> Pad(2) -> Normalize(0.5, 0.5)`` applied per image, a ``DataLoader(batch_size=128,
shuffle=True)``, NCHW tensors moved to the device every batch.
Ours: ``helpers.data.load_mnist`` tensors kept in memory (on the device), ``helpers.data.batches``
with ``channels_last``, and the model in ``channels_last`` memory format.

Both run the same training step (``grading.reference.ddpm_training.train_step``: Algorithm 1 of
Ho et al. 2020 with the reference time embedding) for the same number of steps after a warm-up,
and the script prints examples/s side by side with their ratio. Then it times drawing ``--samples``
images with ``--ddpm-steps`` ancestral steps (``p_sample_loop``, Algorithm 2) and with
``--ddim-steps`` DDIM steps (``ddim_sample``) of the reference samplers (untrained weights: the
time does not depend on them).

Quick check (about a minute on a CPU):
    python benchmarks/train_speed.py --steps 3 --warmup 1 --samples 4 --ddpm-steps 10 --ddim-steps 5
Full run (on a GPU):
    python benchmarks/train_speed.py
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grading.reference.ddpm_training import timestep_embedding, train_step  # noqa: E402
from grading.reference.forward_process import alphas_from_betas, linear_beta_schedule  # noqa: E402
from grading.reference.sampling import ddim_sample, p_sample_loop  # noqa: E402
from helpers.config import data_dir, device as best_device  # noqa: E402
from helpers.data import batches, load_mnist  # noqa: E402
from helpers.models import UNet, count_parameters  # noqa: E402


class PILDigits(torch.utils.data.Dataset):
    """(PIL image, label) pairs from uint8 digits (N, 28, 28), like torchvision's MNIST __getitem__."""

    def __init__(self, digits: torch.Tensor, labels: torch.Tensor, transform):
        self.digits, self.labels, self.transform = digits, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image
        img = Image.fromarray(self.digits[i].numpy(), mode="L")
        return self.transform(img), int(self.labels[i])


def seed_dataset(batch_size: int):
    """The course text's pipeline: torchvision MNIST if its files are present, else the same over PIL digits."""
    from torchvision import datasets, transforms
    tf = transforms.Compose([transforms.ToTensor(), transforms.Pad(2), transforms.Normalize(0.5, 0.5)])
    try:
        full = datasets.MNIST(str(data_dir()), train=True, download=False, transform=tf)
        train, _ = torch.utils.data.random_split(full, [55_000, 5_000],
                                                 generator=torch.Generator().manual_seed(0))
        what = "torchvision MNIST"
    except RuntimeError:
        x, y = load_mnist("train", verbose=False)
        digits = ((x[:, 0, 2:30, 2:30] + 1) * 127.5).round().to(torch.uint8)  # back to the raw 28x28 digits
        train, what = PILDigits(digits, y, tf), "PIL digits of the offline subset"
    loader = torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    return loader, what


def endless(loader):
    while True:
        yield from loader


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_training(model, loader, to_device, alpha_bar, steps: int, warmup: int, dev, amp: bool) -> float:
    """examples/s over ``steps`` training steps after ``warmup`` steps."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator(device=dev).manual_seed(0)
    it = endless(loader)
    model.train()
    count, start = 0, None
    for i in range(warmup + steps):
        if i == warmup:
            sync(dev)
            start = time.perf_counter()
        x, _ = next(it)
        x = to_device(x)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            train_step(model, opt, x, alpha_bar, generator=gen)
        if i >= warmup:
            count += x.shape[0]
    sync(dev)
    return count / (time.perf_counter() - start)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300, help="timed training steps per pipeline")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps before timing")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--samples", type=int, default=100, help="images drawn in the sampling benchmark")
    p.add_argument("--ddpm-steps", type=int, default=1000, help="T of the ancestral sampler (0: skip)")
    p.add_argument("--ddim-steps", type=int, default=50, help="DDIM steps over T = 1000 (0: skip)")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--amp", action="store_true", help="bf16 autocast in our pipeline (CUDA)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device) if args.device else best_device()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type
    torch.manual_seed(0)

    beta = linear_beta_schedule(1000).to(dev)
    _, alpha_bar = alphas_from_betas(beta)

    def build():
        torch.manual_seed(0)
        return UNet(timestep_embedding, width=args.width).to(dev)

    model = build()
    print(f"device {name}, torch {torch.__version__}, U-Net width {args.width} "
          f"({count_parameters(model):,} parameters), batch {args.batch_size}, "
          f"{args.steps} timed steps after {args.warmup} warm-up steps")

    # 1. the course text's pipeline
    loader, what = seed_dataset(args.batch_size)
    seed_rate = time_training(model, loader, lambda x: x.to(dev), alpha_bar, args.steps, args.warmup, dev, False)
    seed_label = f"seed pipeline ({what}, transforms + DataLoader, NCHW)"

    # 2. ours
    model = build().to(memory_format=torch.channels_last)
    x, y = load_mnist("train", verbose=False)
    ours = batches(x, y, args.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0),
                   drop_last=True, device=dev, channels_last=True)
    our_rate = time_training(model, ours, lambda x: x, alpha_bar, args.steps, args.warmup, dev, args.amp)
    our_label = "ours (in-memory batches, channels_last" + (", bf16 autocast)" if args.amp else ")")
    width = max(len(seed_label), len(our_label)) + 1
    print(f"  {seed_label + ':':<{width}} {seed_rate:10.1f} examples/s")
    print(f"  {our_label + ':':<{width}} {our_rate:10.1f} examples/s")
    print(f"  speed-up ours / seed: {our_rate / seed_rate:.2f}x (target >= 1.3x)")

    # 3. sampling time
    model.eval()
    gen = torch.Generator(device=dev).manual_seed(0)
    x_T = torch.randn(args.samples, 1, 32, 32, generator=gen, device=dev).contiguous(
        memory_format=torch.channels_last)
    if args.ddpm_steps:
        beta_s = linear_beta_schedule(args.ddpm_steps).to(dev) if args.ddpm_steps != 1000 else beta
        sync(dev)
        start = time.perf_counter()
        p_sample_loop(model, x_T, beta_s, record_every=max(1, args.ddpm_steps), generator=gen)
        sync(dev)
        print(f"  sampling {args.samples} images, DDPM {args.ddpm_steps} steps: {time.perf_counter() - start:8.2f} s")
    if args.ddim_steps:
        sync(dev)
        start = time.perf_counter()
        ddim_sample(model, x_T, alpha_bar, num_steps=args.ddim_steps, generator=gen)
        sync(dev)
        print(f"  sampling {args.samples} images, DDIM {args.ddim_steps} steps: {time.perf_counter() - start:8.2f} s")


if __name__ == "__main__":
    main()
