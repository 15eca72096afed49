"""Does the downstream model follow its captions? Levers measured on the full-data run.

    python benchmarks/downstream_regime.py run --setting base --steps 600 --every 150
    python benchmarks/downstream_regime.py report --out benchmarks/results/downstream-regime.md

``run`` trains ``train.py stage=train method=full`` (the clean train split) with one named
setting's overrides (:data:`SETTINGS`), evaluating every ``--every`` steps on ``--num-images``
fixed test prompts (domain KID/FID/CLIP score and prompt retrieval top-1/top-5 with chance and the
shuffled-pairing control, :func:`alchemist_pl.metrics.prompt_retrieval`), and writes
``{--runs}/{setting}.json``: the curve, wall time, CPU time of the training process (user +
system, which is what "equal CPU time" compares on a shared machine), load average, command,
commit and whether the tree was clean. ``record --setting S --pid P`` writes the same file for a run still in progress (``P``: its
``train.py`` process) from the evaluations it has made so far and the CPU time it has used, and then
stops it: for a session that cannot wait for ``--steps``. ``reference`` writes ``{--runs}/reference.json``: the same metrics for the real test images of the
same prompts (the ceiling a generator that draws from the data would reach). ``guidance --setting S --ckpt C`` evaluates one checkpoint of a run at several CFG scales into
``{--runs}/guidance-{S}-step{N}.json``. ``report`` turns every such file into one markdown table
per setting and a curve plot of the settings' retrieval against CPU minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's alchemist_pl, not another installed copy

import stamp  # noqa: E402  (benchmarks/stamp.py, beside this script)
import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf, open_dict  # noqa: E402

from alchemist_pl.data import load_split  # noqa: E402
from alchemist_pl.metrics import DomainMetrics  # noqa: E402
from alchemist_pl.pixels import to_model_range  # noqa: E402
from alchemist_pl.stages.evaluator import make_evaluation  # noqa: E402

XATTN = (
    "model.unet.down_block_types=[CrossAttnDownBlock2D,CrossAttnDownBlock2D,CrossAttnDownBlock2D]",
    "model.unet.up_block_types=[CrossAttnUpBlock2D,CrossAttnUpBlock2D,CrossAttnUpBlock2D]",
)
POOLED = ("+model.unet.class_embed_type=projection", "+model.unet.projection_class_embeddings_input_dim=384")
VPRED = ("model.noise_scheduler.prediction_type=v_prediction", "model.sampling_scheduler.prediction_type=v_prediction")

#: setting name -> (description, train.py overrides)
SETTINGS = {
    "base": ("unet_tiny, epsilon-prediction (attention at 8x8, caption dropout 0.1, CFG 3)", ()),
    "xattn": ("+ cross-attention at every resolution (32, 16, 8 px)", XATTN),
    "pooled": ("+ pooled caption added to the time embedding (class_embed_type=projection)", POOLED),
    "minsnr": ("+ min-SNR-5 loss weighting", ("model.snr_gamma=5",)),
    "vpred": ("+ v-prediction", VPRED),
    "pooled_minsnr": ("pooled caption + min-SNR-5", (*POOLED, "model.snr_gamma=5")),
    "pooled_xattn": ("pooled caption + cross-attention at every resolution", (*POOLED, *XATTN)),
    "vpred_pooled": ("v-prediction + pooled caption", (*VPRED, *POOLED)),
    "nocfg": ("base sampled without guidance (CFG 1): what CFG buys", ("eval.guidance_scale=1.0",)),
}


def _commit() -> tuple[str, bool]:
    """(short HEAD, whether the code a run imports and this script are committed), by benchmarks/stamp.py."""
    stamped = stamp.commit("alchemist_pl", "conf", "benchmarks/downstream_regime.py", "train.py")
    return stamped.split()[0], stamped == stamped.split()[0]


def _machine() -> str:
    return f"{stamp.machine().split('; load')[0]}; {torch.get_num_threads()} torch thread(s)"  # load: own fields


def _command(args) -> list[str]:
    return [
        sys.executable,
        "train.py",
        "stage=train",
        "method=full",
        "keep_ratio=1.0",
        "model=unet_tiny",
        "logger=csv",
        f"seed={args.seed}",
        f"train.max_steps={args.steps}",
        f"eval.every_n_steps={args.every}",
        f"eval.num_images={args.num_images}",
        f"eval.sample_steps={args.sample_steps}",
        "model.num_samples=8",
        "model.sample_steps=10",
        f"hydra.run.dir={Path(args.work) / args.setting}",
        *SETTINGS[args.setting][1],
    ]


def _record(args, cmd, clean, load, wall, cpu, curve, test_loss, note=None, commit=None) -> None:
    record = {
        "setting": args.setting,
        "description": SETTINGS[args.setting][0],
        "command": " ".join(["python", *cmd[1:]]),
        "commit": commit,
        "clean_tree": clean,
        "machine": _machine(),
        "load_average_at_start": [round(x, 1) for x in load],
        "load_average_at_end": [round(x, 1) for x in os.getloadavg()],
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "steps": curve[-1]["step"],
        "planned_steps": args.steps,
        "note": note,
        "curve": curve,
        "test_loss": test_loss,
    }
    Path(args.runs).mkdir(parents=True, exist_ok=True)
    (Path(args.runs) / f"{args.setting}.json").write_text(json.dumps(record, indent=1))
    print(json.dumps({k: v for k, v in record.items() if k != "curve"}, indent=1))


def run(args) -> None:
    name, out, cmd = args.setting, Path(args.work) / args.setting, _command(args)
    commit, clean = _commit()  # at the start: the code the run imports
    load = os.getloadavg()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    with open(Path(args.work) / f"{name}.log", "w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.time() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        raise SystemExit(f"{name}: train.py failed ({rc}); see {Path(args.work) / f'{name}.log'}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    m = json.loads((out / "summary.json").read_text())["metrics"]
    _record(args, cmd, clean, load, wall, cpu, m["eval_curve"], m.get("test/loss"), commit=commit)


def record_running(args) -> None:
    """The record of the run in progress as process ``args.pid``; the process is then stopped."""
    stat = Path(f"/proc/{args.pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    cpu = (int(stat[11]) + int(stat[12])) / tick  # utime + stime (fields 14, 15 of proc(5))
    wall = time.clock_gettime(time.CLOCK_BOOTTIME) - int(stat[19]) / tick  # now - starttime (field 22)
    curve = json.loads((Path(args.work) / args.setting / "eval_curve.json").read_text())
    note = f"stopped after the step-{curve[-1]['step']} evaluation of {args.steps} planned steps"
    load = [float(x) for x in args.load_at_start.split(",")]
    _record(args, _command(args), args.clean, load, wall, cpu, curve, None, note, args.commit)
    os.kill(args.pid, 15)


def reference(args) -> None:
    """Retrieval and KID of the prompts' own real test images (what a perfect generator would score)."""
    data, cache = ROOT / "data" / "emoji", ROOT / "data" / "cache"
    enc = {"data_path": data / "train", "resolution": 32, "cache_dir": cache, "test_path": data / "test"}
    test = load_split(data / "test", 32, cache)
    metrics = DomainMetrics.from_cache(enc)
    metrics.set_reference(to_model_range(test.images))
    m = args.num_images
    values = metrics.compute(to_model_range(test.images[:m]), test.text.pooled[test.caption_rows[:m]].float())
    commit, clean = _commit()
    stamped = {"command": f"python benchmarks/downstream_regime.py reference --num-images {m}", "commit": commit}
    stamped |= {"clean_tree": clean, "machine": _machine()}
    Path(args.runs).mkdir(parents=True, exist_ok=True)
    (Path(args.runs) / "reference.json").write_text(json.dumps({"num_images": m, **values, **stamped}, indent=1))
    print(values)


def guidance(args) -> None:
    """The metrics of checkpoint ``args.ckpt`` of run ``args.setting`` at each CFG scale in ``args.scales``."""
    cfg = OmegaConf.load(Path(args.work) / args.setting / ".hydra" / "config.yaml")
    with open_dict(cfg):
        cfg.paths.output_dir = str(Path(args.work) / args.setting)
    test = load_split(cfg.data.test_path, cfg.data.resolution, cfg.data.cache_dir, None, cfg.data.max_tokens)
    callback, _ = make_evaluation(cfg, test)
    model = instantiate(cfg.model)
    blob = torch.load(args.ckpt, weights_only=False, map_location="cpu")
    model.load_state_dict(blob["state_dict"])
    rows = []
    for scale in [float(x) for x in args.scales.split(",")]:
        callback.guidance_scale = scale
        images = callback.generate(model.eval())
        rows.append({"guidance_scale": scale, **callback.metrics.compute(images, callback.prompts["pooled"])})
        print(rows[-1], flush=True)
    Path(args.runs).mkdir(parents=True, exist_ok=True)
    out = Path(args.runs) / f"guidance-{args.setting}-step{blob['global_step']}.json"
    out.write_text(json.dumps({"setting": args.setting, "step": blob["global_step"], "rows": rows}, indent=1))


def _table(r: dict) -> list[str]:
    """One row per evaluation; CPU minutes at step s are the run's CPU time scaled by s / steps
    (evaluation included, so the scale is approximate)."""
    lines = [
        "| step | ≈CPU min | retrieval top-1 | top-5 | top-1 shuffled | top-5 shuffled | domain KID | domain FID | CLIP |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in r["curve"]:
        cpu = r["cpu_s"] / 60 * p["step"] / r["steps"]
        lines.append(
            f"| {p['step']} | {cpu:.1f} | {p['retrieval_top1']:.3f} | {p['retrieval_top5']:.3f} | "
            f"{p['retrieval_top1_shuffled']:.3f} | {p['retrieval_top5_shuffled']:.3f} | "
            f"{p['domain_kid']:.4f} | {p['domain_fid']:.2f} | {p['domain_clip']:.2f} |"
        )
    return lines


def _summary(records: list[dict]) -> list[str]:
    """One row per (setting, evaluation at step 400, 500, 1,000 or the run's last step)."""
    lines = [
        "| setting | step | ≈CPU min | top-1 | top-5 | top-1 shuffled | top-5 shuffled | domain KID |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        for p in r["curve"]:
            if p["step"] in (400, 500, 1000) or p["step"] == r["curve"][-1]["step"]:
                lines.append(
                    f"| {r['setting']} | {p['step']} | {r['cpu_s'] / 60 * p['step'] / r['steps']:.1f} | "
                    f"{p['retrieval_top1']:.3f} | {p['retrieval_top5']:.3f} | {p['retrieval_top1_shuffled']:.3f} | "
                    f"{p['retrieval_top5_shuffled']:.3f} | {p['domain_kid']:.4f} |"
                )
    return [*lines, ""]


def _guidance_tables(runs: Path) -> list[str]:
    lines = []
    for path in sorted(runs.glob("guidance-*.json")):
        g = json.loads(path.read_text())
        lines += [
            f"## CFG scale at sampling: {g['setting']}, checkpoint at step {g['step']}",
            "",
            f"Command: `python benchmarks/downstream_regime.py guidance --setting {g['setting']} --ckpt <step-{g['step']} "
            "checkpoint>` (the run trains with caption dropout 0.1)",
            "",
            "| CFG scale | retrieval top-1 | top-5 | top-1 shuffled | top-5 shuffled | domain KID | domain CLIP |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in g["rows"]:
            lines.append(
                f"| {r['guidance_scale']:g} | {r['retrieval_top1']:.3f} | {r['retrieval_top5']:.3f} | "
                f"{r['retrieval_top1_shuffled']:.3f} | {r['retrieval_top5_shuffled']:.3f} | {r['domain_kid']:.4f} | "
                f"{r['domain_clip']:.2f} |"
            )
        lines.append("")
    return lines


def report(args) -> None:
    paths = sorted(p for p in Path(args.runs).glob("*.json") if p.name != "reference.json" and "guidance" not in p.name)
    records = [json.loads(p.read_text()) for p in paths]
    lines = ["# Downstream regime: does the full-data run follow its captions?", ""]
    lines += _summary(records)
    ref = Path(args.runs) / "reference.json"
    if ref.exists():
        v = json.loads(ref.read_text())
        lines += [
            f"Ceiling: the {v['num_images']} prompts' own real test images score retrieval top-1 "
            f"{v['retrieval_top1']:.3f}, top-5 {v['retrieval_top5']:.3f} (shuffled {v['retrieval_top1_shuffled']:.3f} / "
            f"{v['retrieval_top5_shuffled']:.3f}; chance {v['retrieval_chance_top1']:.3f} / "
            f"{v['retrieval_chance_top5']:.3f}), domain KID {v['domain_kid']:.4f} against all test images"
            + (
                f" (`{v['command']}` at {v['commit']}{'' if v['clean_tree'] else ' + uncommitted changes'})."
                if "commit" in v
                else "."
            ),
            "",
        ]
    for r in records:
        c = r["curve"][-1]
        lines += [
            f"## {r['setting']}: {r['description']}",
            "",
            f"- command: `{r['command']}`",
            f"- commit `{r['commit']}` ({'clean tree' if r['clean_tree'] else 'uncommitted changes'}); "
            f"machine: {r['machine']}",
            *([f"- {r['note']}"] if r.get("note") else []),
            f"- load average at start {r['load_average_at_start']}, at end {r['load_average_at_end']}; "
            f"wall {r['wall_s'] / 60:.1f} min, CPU {r['cpu_s'] / 60:.1f} min (training + evaluation)",
            f"- chance: top-1 {c['retrieval_chance_top1']:.3f}, top-5 {c['retrieval_chance_top5']:.3f}",
            "",
            *_table(r),
            "",
        ]
    lines += _guidance_tables(Path(args.runs))
    if args.notes:
        lines += ["## Reading", "", Path(args.notes).read_text()]
    Path(args.out).write_text("\n".join(lines))
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for r in records:
        x = [r["cpu_s"] / 60 * p["step"] / r["steps"] for p in r["curve"]]
        ax[0].plot(x, [p["retrieval_top5"] for p in r["curve"]], marker="o", label=r["setting"])
        ax[1].plot(x, [p["domain_kid"] for p in r["curve"]], marker="o", label=r["setting"])
    if records:
        ax[0].axhline(records[0]["curve"][-1]["retrieval_chance_top5"], color="grey", ls="--", label="chance")
    ax[0].set(xlabel="CPU minutes", ylabel="retrieval top-5")
    ax[1].set(xlabel="CPU minutes", ylabel="domain KID")
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(Path(args.out).with_suffix(".png"), dpi=100)
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    r = sub.add_parser("record")
    r.add_argument("--pid", type=int, required=True)
    r.add_argument("--commit", required=True, help="the commit the run started at")
    r.add_argument("--clean", action="store_true", help="the tree was clean when the run started")
    r.add_argument("--load-at-start", required=True, help="load average when it started: a,b,c")
    for q in (p, r):
        q.add_argument("--setting", choices=sorted(SETTINGS), required=True)
        q.add_argument("--steps", type=int, default=600)
        q.add_argument("--every", type=int, default=150)
        q.add_argument("--num-images", type=int, default=128)
        q.add_argument("--sample-steps", type=int, default=10)
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--work", default="outputs/downstream-regime")
        q.add_argument("--runs", default="benchmarks/results/downstream-regime")
    f = sub.add_parser("reference")
    f.add_argument("--num-images", type=int, default=128)
    f.add_argument("--runs", default="benchmarks/results/downstream-regime")
    g = sub.add_parser("guidance")
    g.add_argument("--setting", choices=sorted(SETTINGS), required=True)
    g.add_argument("--ckpt", required=True)
    g.add_argument("--scales", default="1,3,7")
    g.add_argument("--work", default="outputs/downstream-regime")
    g.add_argument("--runs", default="benchmarks/results/downstream-regime")
    p = sub.add_parser("report")
    p.add_argument("--runs", default="benchmarks/results/downstream-regime")
    p.add_argument("--out", default="benchmarks/results/downstream-regime.md")
    p.add_argument("--notes", default=None, help="a markdown file appended as the report's reading")
    args = parser.parse_args()
    Path(getattr(args, "work", ".")).mkdir(parents=True, exist_ok=True)
    cmds = {"run": run, "record": record_running, "reference": reference, "guidance": guidance, "report": report}
    cmds[args.cmd](args)


if __name__ == "__main__":
    main()
