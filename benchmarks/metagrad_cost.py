"""Cost of one rater step per meta-gradient estimator, relative to a plain proxy training step.

    python benchmarks/metagrad_cost.py --out benchmarks/results/metagrad-cost.md [--batches 16 32 64] [--repeats 3]

Proxy: the default ``conf/proxy/unet_tiny.yaml`` at 32 px; rater: ``conf/rater/group_mlp.yaml``;
data: real emoji batches (train pool and D_val, each of size B). Steps timed:

- ``plain``: proxy forward + backward + AdamW on the training batch (the unit of the ratios);
- ``first_order``: the rater step of Eq. 9-10 — per-sample losses at θ (forward, no grad), rater
  forward, backward, AdamW (in the bilevel loop the losses come for free from the proxy step);
- ``exact``: :func:`alchemist_pl.metagrad.exact_meta_gradient` (inner gradient, lookahead, D_val
  gradient at θ', one JVP) + rater forward, backward, AdamW;
- ``exact_shared``: the same with the inner gradient ``∇_θ Σ W_i ℓ_i`` given, as the bilevel loop
  runs it (that gradient is also the training part of the proxy step, computed there anyway);
- ``double_backward``: :func:`alchemist_pl.metagrad.double_backward_meta_gradient` + the same.

Each (estimator, B) runs in a fresh subprocess (large allocations are unmapped on free): one
warm-up step, one step for memory, then ``--steps`` timed steps alternating with plain steps on a
copy of the proxy; the time ratio is the median of the pairwise ratios (robust to the load of a
shared machine changing). Peak memory is the rise of the process's peak RSS (``VmHWM``, reset
through ``/proc/self/clear_refs``) over the RSS before the step; on CUDA,
``torch.cuda.max_memory_allocated`` over the allocation before it. The whole sweep is repeated
``--repeats`` times, interleaved, and the table gives medians over repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's alchemist_pl, not another installed copy
METHODS = ["plain", "first_order", "exact_shared", "exact", "double_backward"]


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(method: str, batch: int, steps: int, device: str, threads: int) -> dict:
    import copy
    import gc

    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader

    from alchemist_pl.data import load_split
    from alchemist_pl.metagrad import (
        detached_params,
        double_backward_meta_gradient,
        exact_meta_gradient,
        math_attention,
        proxy_loss_fn,
    )
    from alchemist_pl.rater import sample_weights

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("config", overrides=[f"paths.data_dir={ROOT / 'data'}"])
    proxy = instantiate(cfg.proxy.unet).to(device)
    sched = instantiate(cfg.proxy.scheduler)
    rater = instantiate(cfg.rater).to(device)
    opt_proxy = torch.optim.AdamW(proxy.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)
    opt_rater = torch.optim.AdamW(rater.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)

    def batch_of(split):
        ds = load_split(ROOT / "data" / "emoji" / split, cfg.data.resolution, ROOT / "data" / "cache", limit=batch)
        return {k: v.to(device) for k, v in next(iter(DataLoader(ds, batch_size=batch))).items()}

    train, val = batch_of("train"), batch_of("val")
    t_train = torch.randint(0, 600, (1,), device=device).expand(batch)
    t_val = torch.randint(0, 1000, (batch,), device=device)
    n_train, n_val = torch.randn_like(train["image"]), torch.randn_like(val["image"])
    train_fn = proxy_loss_fn(proxy, sched, train, t_train, n_train)
    val_fn = proxy_loss_fn(proxy, sched, val, t_val, n_val)

    def rater_update(signal):
        s, b = rater(train["image"], train["pooled"])
        opt_rater.zero_grad()
        (sample_weights(s, b) * signal).sum().backward()
        opt_rater.step()

    inner = None
    if method == "exact_shared":  # θ does not move in a rater-only step, so neither does the inner gradient
        with torch.no_grad():
            w0 = sample_weights(*rater(train["image"], train["pooled"]))
        theta = [p for p in proxy.parameters() if p.requires_grad]
        inner = torch.autograd.grad((w0 * train_fn(dict(proxy.named_parameters()))).sum(), theta)

    def step():
        if method == "plain":
            opt_proxy.zero_grad()
            train_fn(dict(proxy.named_parameters())).mean().backward()
            opt_proxy.step()
            return
        with torch.no_grad():
            s, b = rater(train["image"], train["pooled"])
            w = sample_weights(s, b)
        if method == "first_order":
            with torch.no_grad():
                signal = train_fn(detached_params(proxy))
        else:
            with math_attention():
                args = (train_fn, lambda p: val_fn(p).mean(), detached_params(proxy), w, 0.01)
                if method == "double_backward":
                    signal = double_backward_meta_gradient(*args)
                else:
                    signal = exact_meta_gradient(*args, inner_grad=inner)[0]
        rater_update(signal)

    plain_proxy = copy.deepcopy(proxy)  # the reference step trains a copy, so θ above stays put
    plain_opt = torch.optim.AdamW(plain_proxy.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)
    plain_fn = proxy_loss_fn(plain_proxy, sched, train, t_train, n_train)

    def plain_step():
        plain_opt.zero_grad()
        plain_fn(dict(plain_proxy.named_parameters())).mean().backward()
        plain_opt.step()

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    step()  # warm-up: optimizer state, kernel choice
    plain_step()
    sync()
    gc.collect()
    # memory: one step of the method alone
    if device == "cuda":
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _rss_kb("VmRSS") * 1024
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM)
    step()
    sync()
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _rss_kb("VmHWM") * 1024
    # time: the method's step and a plain step alternate, so a load change on a shared machine hits both
    times, plain_times = [], []
    for _ in range(steps):
        for fn, out in ((plain_step, plain_times), (step, times)):
            t0 = time.perf_counter()
            fn()
            sync()
            out.append(time.perf_counter() - t0)
    return {
        "method": method,
        "batch": batch,
        "seconds": statistics.median(times),
        "plain_seconds": statistics.median(plain_times),
        "ratio": statistics.median(t / q for t, q in zip(times, plain_times)),
        "extra_mb": (peak - base) / 2**20,
        "params": sum(p.numel() for p in proxy.parameters()),
    }


def sweep(a) -> list[dict]:
    """Run every (estimator, B) worker ``a.repeats`` times, interleaved; print and return the rows."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": str(a.threads)}
    rows = []
    for r in range(a.repeats):
        for batch in a.batches:
            for method in METHODS:
                cmd = [
                    sys.executable,
                    __file__,
                    "--out",
                    str(a.out),
                    "--worker",
                    method,
                    str(batch),
                    "--steps",
                    str(a.steps),
                    "--threads",
                    str(a.threads),
                    "--device",
                    a.device,
                ]
                res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
                if res.returncode:
                    raise SystemExit(f"worker {method} B={batch} failed:\n{res.stderr[-3000:]}")
                rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
                print(f"repeat {r} {rows[-1]}", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batches", type=int, nargs="*", default=[16, 32, 64])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads per worker (1: steadier on a shared machine)"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--report-from", type=Path, help="write the table from the printed rows of an earlier sweep")
    p.add_argument("--worker", nargs=2, metavar=("METHOD", "BATCH"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker[0], int(a.worker[1]), a.steps, a.device, a.threads)))
        return

    started = time.time()
    if a.report_from:  # rows printed by an earlier (possibly interrupted) sweep: "repeat R {row}" per line
        import ast

        rows = [
            ast.literal_eval(line.split(" ", 2)[2])
            for line in a.report_from.read_text().splitlines()
            if line.startswith("repeat ")
        ]
    else:
        rows = sweep(a)
    runs: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        runs.setdefault((row["method"], row["batch"]), []).append(row)
    batches = [b for b in a.batches if all((m, b) in runs for m in METHODS)]
    done = {b: min(len(runs[(m, b)]) for m in METHODS) for b in batches}  # complete repeats per B
    repeats = min(done.values())
    med = {
        (m, b): {
            f: statistics.median(x[f] for x in runs[(m, b)][: done[b]])
            for f in ("seconds", "plain_seconds", "ratio", "extra_mb")
        }
        for m in METHODS
        for b in batches
    }
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    params = rows[0]["params"]
    cmd = (
        f"python benchmarks/metagrad_cost.py --out {a.out} --batches {' '.join(map(str, a.batches))} "
        f"--repeats {a.repeats} --steps {a.steps} --threads {a.threads} --device {a.device}"
    )
    if a.report_from:
        cmd += f" > LOG`, interrupted after {repeats}+ complete repeat(s), then the same with `--report-from LOG"
    if a.device == "cuda":
        import torch

        machine = f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
        mem = "peak CUDA allocation over the allocation before the step (MB)"
    else:
        machine = (
            f"{platform.machine()}, {os.cpu_count()} cores shared with other jobs while it ran "
            f"(timings are noisy), {a.threads} torch thread(s), Python {platform.python_version()}"
        )
        mem = "peak RSS rise during the step (MB)"
    lines = [
        "# Cost of a rater step per meta-gradient estimator",
        "",
        f"- command: `{cmd}`",
        f"- commit: `{commit}`" + (" (with uncommitted changes)" if dirty else ""),
        f"- machine: {machine}",
        f"- proxy: conf/proxy/unet_tiny.yaml at 32 px ({params / 1e6:.2f}M parameters); real emoji batches, "
        f"D_val batch = training batch = B",
        f"- medians over {', '.join(f'{done[b]} (B={b})' for b in batches)} repeats (fresh process each) of the median of {a.steps} timed steps "
        f"(each paired with a plain step)" + ("" if a.report_from else f"; sweep took {time.time() - started:.0f} s"),
        "",
        f"| B | estimator | step time (s) | plain step alongside (s) | × plain step (time) | {mem} | × plain step (memory) |",
        "|---|---|---|---|---|---|---|",
    ]
    for batch in batches:
        m0 = med[("plain", batch)]["extra_mb"]
        for method in METHODS:
            r = med[(method, batch)]
            lines.append(
                f"| {batch} | {method} | {r['seconds']:.3f} | {r['plain_seconds']:.3f} | {r['ratio']:.2f} | "
                f"{r['extra_mb']:.0f} | {r['extra_mb'] / m0:.2f} |"
            )
    lines.append("")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines))
    print(a.out.read_text())


if __name__ == "__main__":
    main()
