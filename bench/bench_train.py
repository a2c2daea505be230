"""Benchmark the training path: Ray Train's per-worker loop, the data loader, Ray's fixed cost per run.

    .venv/bin/python bench/bench_train.py            # default: ~9-10 minutes on 2 cores (more under load)
    .venv/bin/python bench/bench_train.py --quick    # smoke test, one repetition of the Ray parts: ~3-4 minutes
    .venv/bin/python bench/bench_train.py --only a   # one part (a, b, c)

Most of the wall time is Ray start-up (every fit_trial and every part-c process pays 20-50 s of it
on this 2-core machine, whatever the number of steps), so the budget is set by how many Ray runs
fit: default 6 fit_trial calls in (a) and 6 fresh processes in (c), about 9-13 minutes depending on
the machine's load; --quick 2 and 2 (one repetition per side / variant: a smoke test that the
bench works, not a measurement), about 3-4 minutes.

Three measurements, every comparison measured side by side in this one run (repetitions
interleaved A, B, A, B, ...; medians and the ratio reported), on a synthetic 64 px dataset written
to a temp dir with ``dfsearch.data.synth.generate``:

a. Ray Train worker loop (``fit_trial(..., workers=1)``, the project's ``train_loop_per_worker``,
   its ``train_time_s`` metric) vs a plain single-process PyTorch loop written here with the same
   model, DataLoader, transforms, optimizer (timm ``create_optimizer_v2`` adamw), cosine schedule,
   batch size and number of steps. Both run in a fresh process (the plain loop in a subprocess of
   this script, as Ray's worker is a fresh actor process) and both use ONE torch thread: Ray sets
   OMP_NUM_THREADS=1 for a 1-CPU worker (the bench records ``torch.get_num_threads()`` inside the
   worker to prove it); the plain process gets the same OMP_NUM_THREADS=1 in its environment and
   calls ``torch.set_num_threads(1)``. Also reported: the CPU seconds per step of each process over
   the step loop (``time.process_time``; on the Ray side that includes Ray's own threads in the
   worker), split into user and system time with the minor page faults (``getrusage``): they shift
   less with the machine's load than wall time, and show where a difference comes from.
   Goal: plain/ray images/s <= 1.05.
b. DataLoader (JPEG decode + augmentation, ``loader_workers=0`` as the default config) vs
   preloaded tensors (every image decoded and normalised once, batches sliced) feeding the same
   model, one thread. Goal: preloaded/loader images/s <= 1.05. The loader alone (no model) is
   timed in the same interleave to show where the difference goes.
c. Fixed overhead of one Ray Train run (1 epoch, tiny data): ``ray.init``, ``fit_trial`` call ->
   first training step, training steps, after-loop (eval + checkpoint + report), teardown; with and
   without ``SPEED_ENV``. Each repetition is a fresh subprocess (the env vars are read at
   ``ray.init``), variants interleaved. "Without" sets Ray's own defaults explicitly.

Timestamps inside the Ray worker come from a thin wrapper around ``train_loop_per_worker``
(module attribute swapped in the driver for the duration of a ``fit_trial`` call; the worker runs
the unmodified loop, and the wrapper only records wall-clock, CPU and getrusage stamps at the start
and end of the first epoch's step loop, the worker process's start time and the torch thread count).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# One thread everywhere, set the way Ray sets it for a 1-CPU worker: in the environment before the
# OpenMP/BLAS runtimes load (plus torch.set_num_threads(1) in main). Child processes inherit it.
os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dfsearch import models  # noqa: E402
from dfsearch.config import TrainConfig  # noqa: E402
from dfsearch.data.loading import Augment, ImageList, build_transform, make_loader  # noqa: E402
from dfsearch.data.views import View  # noqa: E402

BATCH = 64
IMG = 64
LR = 1e-3
RAY_DEFAULT_ENV = {  # Ray 2.x defaults of the SPEED_ENV knobs (ray/train/v2/_internal/constants.py)
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "2.0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1",
    "RAY_TRAIN_METRICS_ENABLED": "1",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "1",
}


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def cfg_for(arch: str, epochs: int = 1) -> TrainConfig:
    return TrainConfig(arch=arch, img_size=IMG, epochs=epochs, batch_size=BATCH, lr=LR, seed=0,
                       optimizer="adamw")


# ----------------------------------------------------------------------------- worker instrumentation

def make_instrumented_loop(stamp_file: str):
    """A wrapper for ``train_loop_per_worker`` that writes wall-clock stamps (worker entry, start of
    the first epoch's step loop, exit) and the worker's torch thread count to ``stamp_file``.
    Defined in __main__, so Ray pickles it by value; inside the worker ``dfsearch.train`` is a
    fresh import, so it calls the unmodified loop."""

    def instrumented(cfg):
        import json as _json
        import time as _time

        t_entry = _time.time()
        import torch as _torch

        import importlib
        import resource

        import dfsearch.train as T
        from dfsearch.data import loading

        try:  # where the step loop lives (dfsearch.worker since the loop was split out of train.py)
            L = importlib.import_module("dfsearch.worker")
        except ImportError:
            L = T

        stamps = {"entry": t_entry, "threads": _torch.get_num_threads(),
                  "omp_env": os.environ.get("OMP_NUM_THREADS")}
        try:  # when this worker process was started (Linux): /proc/self/stat field 22 vs /proc/uptime
            with open("/proc/self/stat") as f:
                start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
            with open("/proc/uptime") as f:
                uptime = float(f.read().split()[0])
            stamps["proc_start"] = _time.time() - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
        except (OSError, ValueError, IndexError):
            pass
        orig = loading.ShardSampler.set_epoch
        orig_reduce = L._all_reduce_sum

        def set_epoch(self, epoch):  # called by the loop right before its first step (t0)
            if "loop_start" not in stamps:
                ru = resource.getrusage(resource.RUSAGE_SELF)
                stamps.update(loop_start=_time.time(), cpu_start=_time.process_time(),
                              ru_start=[ru.ru_utime, ru.ru_stime, ru.ru_minflt])
            return orig(self, epoch)

        def all_reduce_sum(*a, **k):  # called by the loop right after its last step
            if "cpu_end" not in stamps:
                ru = resource.getrusage(resource.RUSAGE_SELF)
                stamps.update(loop_end=_time.time(), cpu_end=_time.process_time(),
                              ru_end=[ru.ru_utime, ru.ru_stime, ru.ru_minflt])
            return orig_reduce(*a, **k)

        loading.ShardSampler.set_epoch = set_epoch
        L._all_reduce_sum = all_reduce_sum
        try:
            T.train_loop_per_worker(cfg)
        finally:
            loading.ShardSampler.set_epoch = orig
            L._all_reduce_sum = orig_reduce
            stamps["exit"] = _time.time()
            with open(stamp_file, "w") as f:
                _json.dump(stamps, f)

    return instrumented


def fit_instrumented(cfg: TrainConfig, index_json: dict, *, storage: str, name: str, stamp_file: str,
                     max_train_batches: int | None):
    """``fit_trial(workers=1)`` with the instrumented loop; returns (result, stamps, t_call, t_return)."""
    import dfsearch.train as T

    orig = T.train_loop_per_worker
    T.train_loop_per_worker = make_instrumented_loop(stamp_file)
    try:
        t_call = time.time()
        result = T.fit_trial(cfg, index_json, workers=1, storage=storage, name=name,
                             max_train_batches=max_train_batches)
        t_return = time.time()
    finally:
        T.train_loop_per_worker = orig
    if result.error:
        raise RuntimeError(f"fit_trial {name} failed: {result.error!r}")
    stamps = json.loads(Path(stamp_file).read_text())
    return result, stamps, t_call, t_return


# ----------------------------------------------------------------------------- a. Ray vs plain

def plain_train(arch: str, index, steps: int) -> tuple[float, float, list]:
    """The same steps as ``train_loop_per_worker``'s first epoch, in this process, no Ray.
    Returns (wall seconds of the step loop, timed exactly as the worker times ``train_time_s``;
    CPU seconds of this process over the same span; [user s, system s, minor page faults])."""
    from timm.utils import random_seed

    from dfsearch.worker import make_optimizer

    c = cfg_for(arch)
    random_seed(c.seed, 0)
    model = models.create(c.arch, pretrained=False, num_classes=c.num_classes, img_size=c.img_size)
    models.freeze_to_top(model, c.unfrozen)
    dc = models.data_config(c.arch, c.img_size)
    ds = ImageList(index.root, index.splits["train"],
                   build_transform(c.img_size, dc["mean"], dc["std"], Augment(**c.aug.model_dump())))
    loader = make_loader(ds, batch_size=c.batch_size, rank=0, world=1, shuffle=True, seed=c.seed,
                         workers=c.loader_workers)
    steps_per_epoch = min(len(loader), steps)
    optimizer, scheduler = make_optimizer(model, c, steps_per_epoch)
    random_seed(c.seed * 1000, 0)  # as train_one_epoch seeds epoch 0 on rank 0
    loader.sampler.set_epoch(0)
    model.train()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    c0 = time.process_time()
    t0 = time.perf_counter()
    loss_sum = correct = seen = 0.0
    for step, (x, y, _idx, _bad) in enumerate(loader):
        if step >= steps:
            break
        logits = model(x)
        loss = models.loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step_update(step + 1)
        with torch.no_grad():
            loss_sum += float(loss) * len(y)
            correct += float(((models.prob_fake(logits) >= 0.5).long() == y).sum())
            seen += len(y)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    return wall, cpu, [ru1.ru_utime - ru0.ru_utime, ru1.ru_stime - ru0.ru_stime, ru1.ru_minflt - ru0.ru_minflt]


def plain_child(arch: str, data: str, steps: str) -> None:
    """``--plain-child``: one plain run in a fresh process (like Ray's fresh worker process)."""
    from dfsearch.data.discover import discover

    torch.set_num_threads(1)  # what Ray's OMP_NUM_THREADS=1 gives its 1-CPU worker
    wall, cpu, ru = plain_train(arch, discover(data), int(steps))
    print("PLAIN " + json.dumps({"wall": wall, "cpu": cpu, "ru": ru, "threads": torch.get_num_threads()}))


def plain_in_fresh_process(arch: str, data: str, steps: int) -> tuple[float, float, list]:
    # the same thread settings as Ray's 1-CPU worker: OMP_NUM_THREADS=1 in the environment (read by
    # the OpenMP/BLAS runtimes at load time) and torch.set_num_threads(1) in the child; in 3 paired
    # runs here set_num_threads(1) alone cost ~5-10% more CPU per step than with the env var too
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, __file__, "--plain-child", arch, data, str(steps)],
                       capture_output=True, text=True, env=env)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("PLAIN ")]
    if p.returncode != 0 or not line:
        print(p.stdout[-3000:], p.stderr[-3000:], file=sys.stderr)
        raise RuntimeError(f"plain child for {arch} failed with rc {p.returncode}")
    r = json.loads(line[-1][6:])
    assert r["threads"] == 1, r
    return r["wall"], r["cpu"], r["ru"]


def out_u(rus, steps) -> str:
    """'user U + sys S s/step, F faults/step' from per-rep [user, sys, faults] (medians)."""
    u, sy, f = (med([r[i] for r in rus]) / steps for i in range(3))
    return f"{u:.3f} + sys {sy:.3f} s/step, {f:.0f} page faults/step"


def bench_ray_vs_plain(archs, index, steps, repeats, work: Path) -> dict:
    from dfsearch.cluster import init_ray

    init_ray(num_cpus=2)
    out = {}
    print(f"\n== a. Ray Train worker loop (fit_trial, 1 worker) vs plain PyTorch loop (fresh process): {steps} "
          f"steps x batch {BATCH}, {IMG} px, 1 torch thread each; {repeats} interleaved repeats", flush=True)
    for arch in archs:
        ray_s, plain_s, ray_cpu, plain_cpu, after, threads = [], [], [], [], [], set()
        ray_ru, plain_ru = [], []
        for r in range(repeats):
            res, st, _, _ = fit_instrumented(cfg_for(arch), index.to_json(), storage=str(work / "runs"),
                                             name=f"a-{arch}-{r}", stamp_file=str(work / f"a-{arch}-{r}.json"),
                                             max_train_batches=steps)
            ray_s.append(float(res.metrics["train_time_s"]))
            ray_cpu.append(st["cpu_end"] - st["cpu_start"])
            after.append(st["exit"] - st["loop_end"])
            threads.add((st["threads"], st["omp_env"]))
            wall, cpu, ru = plain_in_fresh_process(arch, index.root, steps)
            plain_s.append(wall)
            plain_cpu.append(cpu)
            ray_ru.append([b - a for a, b in zip(st["ru_start"], st["ru_end"])])
            plain_ru.append(ru)
            print(f"  {arch:<10} rep {r + 1}: ray {steps * BATCH / ray_s[-1]:6.1f} img/s  "
                  f"plain {steps * BATCH / plain_s[-1]:6.1f} img/s   (CPU s/step: ray worker process "
                  f"{ray_cpu[-1] / steps:.3f} = user {ray_ru[-1][0] / steps:.3f} + sys {ray_ru[-1][1] / steps:.3f}, "
                  f"{ray_ru[-1][2] / steps:.0f} page faults/step; plain process {plain_cpu[-1] / steps:.3f} = user "
                  f"{plain_ru[-1][0] / steps:.3f} + sys {plain_ru[-1][1] / steps:.3f}, {plain_ru[-1][2] / steps:.0f} "
                  f"page faults/step; ray worker after the steps: {after[-1]:.1f} s of val/test predict + "
                  f"checkpoint + report)", flush=True)
        ray_ips = steps * BATCH / med(ray_s)
        plain_ips = steps * BATCH / med(plain_s)
        paired = med([r / p for r, p in zip(ray_s, plain_s)])
        cpu_ratio = med(ray_cpu) / med(plain_cpu)
        out[arch] = dict(ray_ips=ray_ips, plain_ips=plain_ips, ratio=plain_ips / ray_ips, paired=paired,
                         cpu_ratio=cpu_ratio, ray_cpu_step=med(ray_cpu) / steps, after_loop_s=med(after),
                         ray_user_sys_faults=[med([r[i] for r in ray_ru]) / steps for i in range(3)],
                         plain_user_sys_faults=[med([r[i] for r in plain_ru]) / steps for i in range(3)],
                         plain_cpu_step=med(plain_cpu) / steps,
                         worker_threads=sorted(threads), plain_threads=1)
        print(f"RESULT a {arch}: ray {ray_ips:.1f} img/s, plain {plain_ips:.1f} img/s (medians) -> "
              f"plain/ray {plain_ips / ray_ips:.3f} (median paired ratio {paired:.3f}); goal <= 1.05: "
              f"{'OK' if plain_ips / ray_ips <= 1.05 else 'MISSED'}; CPU seconds per step ray/plain "
              f"{cpu_ratio:.3f} ({med(ray_cpu) / steps:.3f} vs {med(plain_cpu) / steps:.3f}; user {out_u(ray_ru, steps)} "
              f"vs {out_u(plain_ru, steps)})  [torch threads: "
              f"ray worker {sorted(threads)} (get_num_threads, OMP_NUM_THREADS), plain 1 (set_num_threads)]",
              flush=True)
    import ray

    ray.shutdown()
    return out


# ----------------------------------------------------------------------------- b. loader vs preloaded

def preload(ds: ImageList, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode and normalise every image once (evaluation transform: no per-batch work left)."""
    tf = build_transform(View("resize", IMG), mean, std, None)
    eval_ds = ImageList(ds.root, ds.items, tf)
    xs, ys = [], []
    for i in range(len(eval_ds)):
        x, y, _ = eval_ds[i]
        xs.append(x)
        ys.append(y)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long)


def _step(model, optimizer, x, y):
    logits = model(x)
    loss = models.loss_fn(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def bench_loader_vs_preloaded(archs, index, steps, repeats) -> dict:
    from timm.optim import create_optimizer_v2

    print(f"\n== b. DataLoader (decode + augment, workers=0) vs preloaded tensors: blocks of {steps} steps x "
          f"batch {BATCH}, {IMG} px, 1 torch thread; {repeats} interleaved repeats", flush=True)
    out = {}
    for arch in archs:
        c = cfg_for(arch)
        torch.manual_seed(0)
        model = models.create(arch, img_size=IMG)
        model.train()
        dc = models.data_config(arch, IMG)
        ds = ImageList(index.root, index.splits["train"],
                       build_transform(View("resize", IMG), dc["mean"], dc["std"], Augment(**c.aug.model_dump())))
        loader = make_loader(ds, batch_size=BATCH, rank=0, world=1, shuffle=True, seed=0)
        t0 = time.perf_counter()
        X, Y = preload(ds, dc["mean"], dc["std"])
        t_pre = time.perf_counter() - t0
        optimizer = create_optimizer_v2(model, opt="adamw", lr=LR, weight_decay=c.weight_decay)
        gen = torch.Generator().manual_seed(0)
        for _ in range(2):  # warm-up: first steps allocate
            _step(model, optimizer, X[:BATCH], Y[:BATCH])

        def run_loader(epoch):
            loader.sampler.set_epoch(epoch)
            t = time.perf_counter()
            c = time.thread_time()
            it = iter(loader)
            for _ in range(steps):
                x, y, _, _ = next(it)
                _step(model, optimizer, x, y)
            return time.perf_counter() - t, time.thread_time() - c

        def run_preloaded():
            perm = torch.randperm(len(X), generator=gen)
            t = time.perf_counter()
            c = time.thread_time()
            for i in range(steps):
                j = perm[(i * BATCH) % len(X):][:BATCH]
                _step(model, optimizer, X[j], Y[j])
            return time.perf_counter() - t, time.thread_time() - c

        def run_loader_only(epoch):
            loader.sampler.set_epoch(epoch)
            t = time.perf_counter()
            c = time.thread_time()
            it = iter(loader)
            for _ in range(steps):
                next(it)
            return time.perf_counter() - t, time.thread_time() - c

        lt, pt, ot, lc, pc, oc = [], [], [], [], [], []
        for r in range(repeats):
            for times, cpus, fn in ((lt, lc, lambda: run_loader(r)), (pt, pc, run_preloaded),
                                    (ot, oc, lambda: run_loader_only(100 + r))):
                w, c_ = fn()
                times.append(w)
                cpus.append(c_)
            print(f"  {arch:<10} rep {r + 1}: loader {steps * BATCH / lt[-1]:6.1f} img/s  "
                  f"preloaded {steps * BATCH / pt[-1]:6.1f} img/s  loader alone {steps * BATCH / ot[-1]:7.1f} img/s"
                  f"   (CPU s/step: loader {lc[-1] / steps:.3f}, preloaded {pc[-1] / steps:.3f}, "
                  f"decode+augment {oc[-1] / steps:.3f})", flush=True)
        l_ips, p_ips, o_ips = (steps * BATCH / med(v) for v in (lt, pt, ot))
        paired = med([a / b for a, b in zip(lt, pt)])
        cpu_ratio = med(lc) / med(pc)
        per_batch_ms = med(oc) / steps * 1000  # CPU time: the loader's own cost, load-independent
        out[arch] = dict(loader_ips=l_ips, preloaded_ips=p_ips, ratio=p_ips / l_ips, paired=paired,
                         cpu_ratio=cpu_ratio, loader_only_ips=o_ips, loader_ms_per_batch=per_batch_ms,
                         step_ms=med(pc) / steps * 1000, preload_s=t_pre, n=len(X))
        print(f"RESULT b {arch}: loader {l_ips:.1f} img/s, preloaded {p_ips:.1f} img/s (medians) -> "
              f"preloaded/loader {p_ips / l_ips:.3f} (median paired ratio {paired:.3f}); goal <= 1.05: "
              f"{'OK' if p_ips / l_ips <= 1.05 else 'MISSED'}; CPU seconds per step loader/preloaded "
              f"{cpu_ratio:.3f}  [decode+augment alone: {per_batch_ms:.1f} CPU ms/batch vs "
              f"{med(pc) / steps * 1000:.0f} CPU ms/step of compute; preloading {len(X)} images took "
              f"{t_pre:.1f} s]", flush=True)
    return out


# ----------------------------------------------------------------------------- c. fixed overhead

def overhead_child(variant: str, data: str, work: str, out_file: str) -> None:
    """One fresh process: ray.init, one tiny 1-epoch fit_trial, stamps to ``out_file``."""
    t_start = time.time()
    import ray

    from dfsearch.data.discover import discover
    from dfsearch.cluster import init_ray
    from dfsearch.ray_compat import SPEED_ENV

    index = discover(data)
    t_init0 = time.time()
    init_ray(num_cpus=2)
    t_init1 = time.time()
    res, st, t_call, t_ret = fit_instrumented(cfg_for("small_cnn"), index.to_json(), storage=work,
                                              name=f"c-{variant}-{os.getpid()}",
                                              stamp_file=os.path.join(work, f"c-{os.getpid()}.json"),
                                              max_train_batches=None)
    m = res.metrics
    train = float(m["train_time_s"])
    rec = dict(variant=variant, env={k: os.environ.get(k) for k in SPEED_ENV},
               imports_s=t_init0 - t_start, ray_init_s=t_init1 - t_init0,
               to_worker_proc_s=st.get("proc_start", float("nan")) - t_call,
               proc_to_loop_s=st["entry"] - st.get("proc_start", float("nan")),
               to_worker_s=st["entry"] - t_call, worker_setup_s=st["loop_start"] - st["entry"],
               to_first_step_s=st["loop_start"] - t_call, train_s=train,
               after_loop_s=st["exit"] - (st["loop_start"] + train), teardown_s=t_ret - st["exit"],
               fit_wall_s=t_ret - t_call, wall_minus_train_s=(t_ret - t_call) - train,
               epoch_time_s=float(m["epoch_time_s"]), steps=len(index.splits["train"]) // BATCH)
    Path(out_file).write_text(json.dumps(rec))
    ray.shutdown()


def bench_overhead(data: Path, repeats: int, work: Path) -> dict:
    from dfsearch.ray_compat import SPEED_ENV

    print(f"\n== c. fixed overhead of one Ray Train run (small_cnn, 1 epoch, tiny data, 1 worker); "
          f"fresh process per run, {repeats} interleaved repeats per variant", flush=True)
    variants = {"SPEED_ENV": dict(SPEED_ENV), "Ray defaults": dict(RAY_DEFAULT_ENV)}
    recs = {v: [] for v in variants}
    for r in range(repeats):
        for v, env_vars in variants.items():
            env = {k: val for k, val in os.environ.items() if k not in SPEED_ENV}
            env.update(env_vars)
            out_file = work / f"c-{r}-{v.replace(' ', '_')}.json"
            wd = work / f"c-run-{r}-{v.replace(' ', '_')}"
            wd.mkdir(parents=True, exist_ok=True)
            t0 = time.time()
            p = subprocess.run([sys.executable, __file__, "--overhead-child", v, str(data), str(wd), str(out_file)],
                               env=env, capture_output=True, text=True)
            if p.returncode != 0:
                print(p.stdout[-3000:], p.stderr[-3000:], file=sys.stderr)
                raise RuntimeError(f"overhead child ({v}) failed with rc {p.returncode}")
            rec = json.loads(out_file.read_text())
            rec["process_s"] = time.time() - t0
            recs[v].append(rec)
            print(f"  rep {r + 1} {v:<12}: process {rec['process_s']:5.1f} s, ray.init {rec['ray_init_s']:4.1f} s, "
                  f"fit_trial {rec['fit_wall_s']:5.1f} s (worker process at +{rec['to_worker_proc_s']:.1f} s, "
                  f"loop fn at +{rec['to_worker_s']:.1f} s, first step at +{rec['to_first_step_s']:.1f} s, "
                  f"train {rec['train_s']:.1f} s, after loop {rec['after_loop_s']:.1f} s, teardown "
                  f"{rec['teardown_s']:.1f} s)", flush=True)
    keys = ["process_s", "imports_s", "ray_init_s", "to_worker_proc_s", "proc_to_loop_s", "to_worker_s",
            "worker_setup_s", "to_first_step_s", "train_s",
            "after_loop_s", "teardown_s", "fit_wall_s", "wall_minus_train_s"]
    labels = {"process_s": "whole process (python start .. exit)", "imports_s": "imports + discover",
              "ray_init_s": "ray.init",
              "to_worker_proc_s": "fit_trial call -> worker process started",
              "proc_to_loop_s": "worker process start -> train loop function entered",
              "to_worker_s": "= fit_trial call -> train loop function entered",
              "worker_setup_s": "worker setup (model, data, optimizer, DDP)",
              "to_first_step_s": "= fit_trial call -> first training step", "train_s": "training steps (train_time_s)",
              "after_loop_s": "after the steps: val/test predict, checkpoint, report",
              "teardown_s": "worker exit -> fit_trial returns",
              "fit_wall_s": "fit_trial wall", "wall_minus_train_s": "fit_trial wall - train time"}
    out = {v: {k: med([rec[k] for rec in rs]) for k in keys} for v, rs in recs.items()}
    steps = recs["SPEED_ENV"][0]["steps"]
    print(f"RESULT c (medians of {repeats}; {steps} training steps of batch {BATCH}):")
    print(f"  {'':<56}{'SPEED_ENV':>11}{'Ray defaults':>14}")
    for k in keys:
        print(f"  {labels[k]:<56}{out['SPEED_ENV'][k]:>10.2f}s{out['Ray defaults'][k]:>13.2f}s")
    return out


# ----------------------------------------------------------------------------- main

def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--overhead-child":
        overhead_child(*sys.argv[2:6])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--plain-child":
        plain_child(*sys.argv[2:5])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer steps and repeats (smoke test, about 3-4 minutes)")
    ap.add_argument("--archs", nargs="+", default=["small_cnn", "resnet18"])
    ap.add_argument("--only", nargs="+", choices=["a", "b", "c"], default=["a", "b", "c"])
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (data, runs)")
    args = ap.parse_args()
    if args.quick:
        a_steps, a_rep, b_steps, b_rep, c_rep = 6, 1, 5, 3, 1  # smoke test: one Ray run per side/variant
    else:
        a_steps, a_rep, b_steps, b_rep, c_rep = 12, 3, 8, 4, 3

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)  # + OMP_NUM_THREADS=1 (top of file) = what Ray gives a 1-CPU worker
    from dfsearch.data.discover import discover
    from dfsearch.data.synth import generate

    t_all = time.time()
    work = Path(tempfile.mkdtemp(prefix="dfsearch-bench-train-"))
    try:
        t0 = time.time()
        data = generate(work / "data", n=a_steps * BATCH, size=IMG, seed=0, difficulty=0.4, progress=False)
        tiny = generate(work / "tiny", n=4 * BATCH, size=IMG, seed=1, difficulty=0.4, progress=False)
        index = discover(data)
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; torch "
              f"{torch.__version__}; data: {len(index.splits['train'])} train / {len(index.splits['valid'])} val / "
              f"{len(index.splits['test'])} test images, {IMG} px (made in {time.time() - t0:.1f} s)", flush=True)
        res, loads = {}, {}
        for part, fn in (("b", lambda: bench_loader_vs_preloaded(args.archs, index, b_steps, b_rep)),
                         ("c", lambda: bench_overhead(tiny, c_rep, work)),
                         ("a", lambda: bench_ray_vs_plain(args.archs, index, a_steps, a_rep, work))):
            if part in args.only:
                la0, t_part = os.getloadavg()[0], time.time()
                res[part] = fn()
                loads[part] = (la0, os.getloadavg()[0], time.time() - t_part)
                print(f"[part {part}: {loads[part][2]:.0f} s, load average {la0:.1f} -> {loads[part][1]:.1f}]",
                      flush=True)

        print(f"\n==================== SUMMARY ({'quick' if args.quick else 'default'} mode, "
              f"{time.time() - t_all:.0f} s, load average {os.getloadavg()[0]:.2f} at end)")
        for arch, r in res.get("a", {}).items():
            print(f"a. {arch:<10} ray loop {r['ray_ips']:6.1f} img/s | plain loop {r['plain_ips']:6.1f} img/s | "
                  f"plain/ray {r['ratio']:.3f} (paired {r['paired']:.3f}) | goal <= 1.05 "
                  f"{'OK' if r['ratio'] <= 1.05 else 'MISSED'} | CPU/step ray/plain {r['cpu_ratio']:.3f} "
                  f"(sys s/step {r['ray_user_sys_faults'][1]:.3f} vs {r['plain_user_sys_faults'][1]:.3f}) | "
                  f"ray after-loop {r['after_loop_s']:.1f} s")
        for arch, r in res.get("b", {}).items():
            print(f"b. {arch:<10} loader {r['loader_ips']:6.1f} img/s | preloaded {r['preloaded_ips']:6.1f} img/s | "
                  f"preloaded/loader {r['ratio']:.3f} (paired {r['paired']:.3f}) | goal <= 1.05 "
                  f"{'OK' if r['ratio'] <= 1.05 else 'MISSED'} | CPU/step loader/preloaded {r['cpu_ratio']:.3f} | "
                  f"decode+augment {r['loader_ms_per_batch']:.0f} CPU ms/batch")
        if "c" in res:
            for v, r in res["c"].items():
                print(f"c. {v:<12} ray.init {r['ray_init_s']:.1f} s | fit_trial -> first step "
                      f"{r['to_first_step_s']:.1f} s (worker process started at {r['to_worker_proc_s']:.1f} s) | "
                      f"fit wall {r['fit_wall_s']:.1f} s - train {r['train_s']:.1f} s = "
                      f"{r['wall_minus_train_s']:.1f} s overhead (after loop {r['after_loop_s']:.1f} s, teardown "
                      f"{r['teardown_s']:.1f} s) | whole process {r['process_s']:.1f} s")
        print("load average (1 min) at start -> end of each part: " + ", ".join(
            f"{p} {a:.1f} -> {b:.1f} ({t:.0f} s)" for p, (a, b, t) in loads.items()) +
            f" on {os.cpu_count()} CPUs (wall-time ratios are only as good as the load was steady; the CPU-time "
            f"ratios are less sensitive to it)")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
