"""Can the input pipeline feed the GPU? Training images/s per GPU with synthetic tensors (the compute
limit) against the real loader (JPEG files: decode + augment in DataLoader processes) and against
the decoded-pixel cache (``dfsearch.data.decoded``), side by side in one run, and scaling from 1 to
N DDP workers.

    .venv/bin/python bench/gpu_throughput.py                       # on a GPU: ResNet-50, 224 px, bf16, channels_last
    .venv/bin/python bench/gpu_throughput.py --workers 1 2 4 8     # + scaling (one GPU per worker)
    .venv/bin/python bench/gpu_throughput.py --cpu                 # this machine: the same code, small

Each mode runs the same training step as ``dfsearch.worker`` (AdamW, AMP bf16 where supported,
channels_last for convnets, ``cudnn.benchmark``, pinned memory, ``loader_workers: auto``), on the
same model, for ``--steps`` steps after ``--warmup`` steps, in fresh processes (DDP over nccl on GPUs,
gloo on CPU). Goals (issue #13): real loader >= 0.9 x synthetic; >= 2,500 img/s on one H100-class
GPU. It also prints the loader alone (no model) in images/s per loader process: what one CPU core
decodes and augments, which sizes how many cores a GPU needs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MODES = ("synthetic", "files", "cache")
sys.path.insert(0, str(ROOT))


def make_data(folder: Path, n: int, size: int) -> Path:
    from dfsearch.data.synth import generate

    return generate(folder / "data", n=n, size=size, seed=0, difficulty=0.4, progress=False)


def loader_for(mode: str, data: Path, args, rank: int, world: int, device):
    from dfsearch import models
    from dfsearch.data import decoded
    from dfsearch.data.discover import discover
    from dfsearch.data.loading import Augment, ImageList, build_transform, make_loader
    from dfsearch.data.views import View
    from dfsearch.worker import loader_processes

    index = discover(str(data))
    items = index.splits["train"]
    dc = models.data_config(args.arch, args.img_size)
    tf = build_transform(View("crop", args.img_size), dc["mean"], dc["std"], Augment(hflip=0.5))
    pixels = decoded.open_or_build(index.root, items, folder=data.parent / "cache") if mode == "cache" else None
    workers = loader_processes(args.loader_workers, device)
    ds = ImageList(index.root, items, tf, pixels=pixels)
    return make_loader(ds, batch_size=args.batch, rank=rank, world=world, shuffle=True, seed=0, workers=workers,
                       pin_memory=device.type == "cuda"), workers


def batches(mode: str, data: Path, args, rank: int, world: int, device):
    """An endless stream of (x, y) on ``device``."""
    if mode == "synthetic":
        x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
        y = torch.randint(0, 2, (args.batch,), device=device)
        while True:
            yield x, y
    loader, _ = loader_for(mode, data, args, rank, world, device)
    epoch = 0
    while True:
        loader.sampler.set_epoch(epoch)
        for x, y, _, _ in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        epoch += 1


def train_rank(rank: int, world: int, mode: str, data: str, args, out: str) -> None:
    """One DDP rank: ``--warmup`` steps, then ``--steps`` timed ones; rank 0 writes images/s."""
    import torch.distributed as dist

    from dfsearch import models
    from dfsearch.worker import TOKEN_FAMILIES, _autocast

    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device(f"cuda:{rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    model = models.create(args.arch, num_classes=1, img_size=args.img_size).to(device)
    if cuda and models.get_spec(args.arch).family not in TOKEN_FAMILIES:
        model = model.to(memory_format=torch.channels_last)
    model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank] if cuda else None)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and not torch.cuda.is_bf16_supported())
    stream = batches(mode, Path(data), args, rank, world, device)

    def step():
        x, y = next(stream)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp=cuda):
            loss = models.loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    dist.barrier()
    dt = time.perf_counter() - t0
    if rank == 0:
        Path(out).write_text(json.dumps({"img_s": args.steps * args.batch * world / dt, "seconds": dt}))
    dist.destroy_process_group()


def run_mode(mode: str, data: Path, args, world: int, work: Path) -> float:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    out = work / f"{mode}-{world}.json"
    mp.spawn(train_rank, args=(world, mode, str(data), args, str(out)), nprocs=world, join=True)
    return json.loads(out.read_text())["img_s"]


def loader_alone(mode: str, data: Path, args, batches_n: int) -> tuple[float, int]:
    """Images/s of the loader with no model (one rank), and its loader processes."""
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    loader, workers = loader_for(mode, data, args, 0, 1, device)
    it = iter(loader)
    next(it)  # the processes' start-up
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches_n):
        try:
            x, *_ = next(it)
        except StopIteration:
            it = iter(loader)
            x, *_ = next(it)
        n += len(x)
    return n / (time.perf_counter() - t0), workers


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="run on CPU at a small size (this machine)")
    p.add_argument("--arch")
    p.add_argument("--img-size", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--images", type=int, help="training images generated (JPEG, at --img-size)")
    p.add_argument("--workers", type=int, nargs="+", default=[1], help="DDP workers (one GPU each) to scale over")
    p.add_argument("--loader-workers", default="auto", help="DataLoader processes per worker (auto: as a search)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank on CPU")
    p.add_argument("--repeats", type=int, default=3, help="runs of each mode, interleaved; medians reported")
    p.add_argument("--loader-only", action="store_true", help="only the loader alone (no model): e.g. at 224 px on CPU")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    cpu = args.cpu or not torch.cuda.is_available()
    args.cpu = cpu
    defaults = dict(arch="resnet18", img_size=64, batch=32, steps=12, warmup=3, images=1024) if cpu else \
        dict(arch="resnet50", img_size=224, batch=256, steps=50, warmup=15, images=8192)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.loader_workers != "auto":
        args.loader_workers = int(args.loader_workers)
    if cpu and args.loader_workers == "auto":
        args.loader_workers = 1  # auto is 0 on CPU; one process here keeps decode off the training thread
    device = "cpu" if cpu else torch.cuda.get_device_name(0)
    print(f"device {device}; {args.arch} at {args.img_size} px, batch {args.batch}, {args.steps} timed steps after "
          f"{args.warmup}; loader_workers {args.loader_workers}", file=sys.stderr)
    report = {"device": device, "arch": args.arch, "img_size": args.img_size, "batch": args.batch, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        data = make_data(work, args.images, args.img_size)
        print(f"generated {args.images} JPEG training images in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        for mode in ("files", "cache"):
            ips, procs = loader_alone(mode, data, args, batches_n=max(8, args.steps))
            per = ips / max(1, procs)
            report[f"loader_alone_{mode}"] = {"img_s": ips, "processes": procs, "img_s_per_process": per}
            print(f"loader alone, {mode:<5}: {ips:8.1f} img/s with {procs} loader process(es) "
                  f"({per:.1f} img/s per process)", file=sys.stderr)
        for world in args.workers if not args.loader_only else ():
            row = {"workers": world}
            runs = {m: [] for m in MODES}
            for rep in range(args.repeats):  # interleaved: a slow spell of the machine hits every mode alike
                for mode in MODES:
                    runs[mode].append(run_mode(mode, data, args, world, work))
                    print(f"{world} worker(s) {mode:<9} #{rep + 1}: {runs[mode][-1]:8.1f} img/s", file=sys.stderr)
            row.update({m: statistics.median(v) for m, v in runs.items()}, runs=runs)
            row["files/synthetic"] = row["files"] / row["synthetic"]
            row["cache/synthetic"] = row["cache"] / row["synthetic"]
            report["rows"].append(row)
    if args.json:
        print(json.dumps(report))
        return
    print(f"\n{device}: {args.arch} {args.img_size} px, batch {args.batch} per worker, loader_workers "
          f"{args.loader_workers}; medians of {args.repeats} interleaved runs")
    if args.loader_only:
        for mode in ("files", "cache"):
            r = report[f"loader_alone_{mode}"]
            print(f"loader alone ({mode}): {r['img_s']:.1f} img/s, {r['img_s_per_process']:.1f} per loader process")
        return
    print("| workers | synthetic img/s | JPEG loader img/s | cached img/s | loader/synthetic | cache/synthetic |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in report["rows"]:
        print(f"| {r['workers']} | {r['synthetic']:.1f} | {r['files']:.1f} | {r['cache']:.1f} | "
              f"{r['files/synthetic']:.3f} | {r['cache/synthetic']:.3f} |")
    one = report["rows"][0]
    print(f"\ngoal loader >= 0.9 x synthetic: JPEG loader {'OK' if one['files/synthetic'] >= 0.9 else 'MISSED'}, "
          f"cache {'OK' if one['cache/synthetic'] >= 0.9 else 'MISSED'}"
          + ("" if cpu else f"; goal >= 2500 img/s per GPU: {'OK' if one['cache'] >= 2500 else 'MISSED'}"))
    for mode in ("files", "cache"):
        r = report[f"loader_alone_{mode}"]
        print(f"loader alone ({mode}): {r['img_s']:.1f} img/s, {r['img_s_per_process']:.1f} per loader process")


if __name__ == "__main__":
    main()
