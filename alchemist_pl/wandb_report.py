"""W&B comparison report for the runs ``alchemist-compare`` reads.

:func:`report_spec` describes the report from the runs' ``summary.json`` files and their offline
W&B logs (``wandb/offline-run-*`` beside each summary, as ``logger=wandb`` writes them): its
sections, each a run set (stage, W&B run ids, grouping, runs-table columns) with panels whose keys
name what the runs logged, tagged by where W&B keeps them:

- ``history:KEY`` a logged series (x axis ``trainer/global_step``), ``summary:KEY`` its last value,
  ``config:KEY`` a config entry (dotted for nested keys), ``media:KEY`` a logged image,
  ``table:KEY`` a logged ``wandb.Table``.

Sections: training runs grouped by (method, keep_ratio), seeds aggregated (mean ± std) — each
metric against keep_ratio and its evaluation curve; sample grids; the prune runs' selected-percentile
histograms; the rate runs' scores table and ranking grid with the rating-quality table of
``report.md`` (AUROC per corruption kind). :func:`write_spec` writes it as ``wandb-report.json``
(offline, no account needed). :func:`save_report` turns it into a ``wandb_workspaces`` report and
saves it to ``ENTITY/PROJECT`` (online; the runs must be synced there first with ``wandb sync``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .wandb_log import find_run, read_run

SPEC_NAME = "wandb-report.json"
STEP = "history:trainer/global_step"  # the x axis Lightning's WandbLogger logs with every metric
GROUPING = ["config:method", "config:keep_ratio"]
SEEDS = {"groupby_aggfunc": "mean", "groupby_rangefunc": "stddev"}  # a grouped run set's seeds: mean ± std
KEY_FIELDS = {  # panel type -> its fields that name logged keys
    "LinePlot": ("x", "y"),
    "BarPlot": ("metrics",),
    "ScatterPlot": ("x", "y"),
    "MediaBrowser": ("media_keys",),
    "WeavePanelSummaryTable": ("table_name",),
    "MarkdownPanel": (),
}
SECTIONS = ("history", "summary", "config", "media", "table")


def _run_entry(s: dict) -> dict:
    entry = {k: s.get(k) for k in ("stage", "method", "keep_ratio", "seed", "task_name")}
    entry["summary"] = s["_path"]
    offline = find_run(Path(s["_path"]).parent)
    if offline is None:
        return {**entry, "wandb_id": None}
    run = read_run(offline)
    return {
        **entry,
        "wandb_id": run.id,
        "wandb_name": run.name,
        "group": run.group,
        "job_type": run.job_type,
        "project": run.project,
        "offline_dir": str(offline),
    }


def _runset(name: str, runs: list[dict], stage: str, grouped: bool, columns=()) -> dict:
    ids = [r["wandb_id"] for r in runs if r["stage"] == stage and r["wandb_id"]]
    return {
        "name": name,
        "filters": [{"key": "JobType", "op": "==", "value": stage}, {"key": "ID", "op": "in", "value": ids}],
        "groupby": GROUPING if grouped else [],
        "columns": ["config:method", "config:keep_ratio", "config:seed", *columns],
    }


def _md_sections(report_md: str) -> dict[str, str]:
    """``report.md`` split at its ``## `` headings: heading (first word) -> text; the head under ''."""
    parts = report_md.split("\n## ")
    out = {"": parts[0].strip()}
    for p in parts[1:]:
        out[p.split()[0].lower()] = "## " + p.strip()
    return out


def _panel(kind: str, title: str, **fields) -> dict:
    return {"type": kind, "title": title, **fields}


def _section(title: str, text: str, runset: dict, panels: list[dict]) -> dict:
    return {"title": title, "text": text, "runset": runset, "panels": panels}


def _train_sections(summaries: list[dict], metrics, runs: list[dict]) -> list[dict]:
    train = [s for s in summaries if s["stage"] == "train"]
    present = [(k, lab, lo) for k, lab, lo in metrics if any(k in s["metrics"] for s in train)]
    curves = [
        m
        for m in present[:3]
        if any(m[0].split("/")[-1] in p for s in train for p in s["metrics"].get("eval_curve", []))
    ]
    grouped = _runset("training runs", runs, "train", True, [f"summary:{k}" for k, _, _ in present])
    against_kr = []
    for key, label, lower in present:
        title = f"{label} ({'lower' if lower else 'higher'} is better): mean ± std over seeds"
        against_kr.append(_panel("BarPlot", title, metrics=[f"history:{key}"], **SEEDS))
        against_kr.append(
            _panel("ScatterPlot", f"{label} vs keep_ratio, every run", x="config:keep_ratio", y=f"summary:{key}")
        )
    curves = [_panel("LinePlot", f"{lab} during training", x=STEP, y=[f"history:{k}"], **SEEDS) for k, lab, _ in curves]
    curves.append(_panel("LinePlot", "training loss", x=STEP, y=["history:train/loss"], smoothing_factor=0.6, **SEEDS))
    grids = [
        _panel("MediaBrowser", title, media_keys=[f"media:{key}"], gallery_axis="run")
        for output, key, title in (
            ("eval_samples", "eval/samples", "evaluation samples (fixed captions and seeds)"),
            ("samples", "samples", "samples of the test captions"),
        )
        if any(output in s.get("outputs", {}) for s in train)
    ]
    return [
        _section(
            "Metric vs keep_ratio", "One bar per (method, keep_ratio), mean ± std over seeds.", grouped, against_kr
        ),
        _section(
            "Evaluation curves", "One line per (method, keep_ratio): mean over seeds, ± std band.", grouped, curves
        ),
        _section("Sample grids", "", _runset("training runs", runs, "train", False), grids),
    ]


def _selection_and_rating(summaries: list[dict], runs: list[dict], md: dict[str, str]) -> list[dict]:
    out = []
    if any(s["stage"] == "prune" for s in summaries):
        mean = "prune/selected_percentile_mean"
        panels = [
            _panel("MediaBrowser", "selected-percentile histogram", media_keys=["media:prune/percentiles"]),
            _panel("BarPlot", "mean selected percentile", metrics=[f"history:{mean}"]),
        ]
        runset = _runset("prune runs", runs, "prune", False, [f"summary:{mean}"])
        out.append(
            _section("Selected percentiles", "Rank percentiles (0 = top score) of the kept samples.", runset, panels)
        )
    if any(s["stage"] == "rate" for s in summaries):
        panels = [
            _panel("WeavePanelSummaryTable", "scores of every pool sample", table_name="table:rate/scores"),
            _panel("MediaBrowser", "ranking: head, middle, tail", media_keys=["media:rate/ranking"]),
            _panel("LinePlot", "rater training: D_val loss", x=STEP, y=["history:rate/val_loss"]),
        ]
        if "rating" in md:  # report.md's table: AUROC per corruption kind (from the rate summaries)
            panels.insert(0, _panel("MarkdownPanel", "rating quality", markdown=md["rating"]))
        out.append(_section("Rating quality", "", _runset("rate runs", runs, "rate", False), panels))
    return out


def report_spec(summaries: list[dict], metrics, report_md: str = "", source=()) -> dict:
    """The report of the runs whose ``summaries`` (``compare.load_summaries``: train, rate, prune;
    each with its ``_path``) are given; see the module docstring. ``metrics``: (key, label, lower is
    better) of the training metrics to show; ``report_md``: the text of ``report.md``, whose tables
    head the report; ``source``: the folders read, for the description. Sections without W&B runs
    are left out.

    Raises:
        ValueError: no summary; a W&B run log that cannot be read (named).
    """
    if not summaries:
        raise ValueError(f"no train, rate or prune summary.json under {', '.join(map(str, source))}")
    runs = [_run_entry(s) for s in summaries]
    md = _md_sections(report_md)
    sections = _train_sections(summaries, metrics, runs) + _selection_and_rating(summaries, runs, md)
    sections = [s for s in sections if s["panels"] and s["runset"]["filters"][1]["value"]]
    head = "\n\n".join(md[k] for k in md if k not in ("rating", "plots"))
    missing = [r["summary"] for r in runs if not r["wandb_id"]]
    tasks = ", ".join(sorted({r["task_name"] for r in runs if r["task_name"]}))
    return {
        "title": f"alchemist-pl comparison: {tasks}"[:128],  # W&B's limit
        "description": f"{len(runs)} runs under {', '.join(map(str, source))}",
        "markdown": head,
        "projects": sorted({r["project"] for r in runs if r["wandb_id"]}),
        "runs": runs,
        "runs_without_wandb_log": missing,
        "sections": sections,
    }


def write_spec(summaries: list[dict], metrics, out: str | Path, report_md: str = "", source=()) -> Path:
    """Write :func:`report_spec` to ``out/wandb-report.json``; returns its path."""
    path = Path(out) / SPEC_NAME
    tmp = path.with_name(f".{SPEC_NAME}.tmp")
    tmp.write_text(json.dumps(report_spec(summaries, metrics, report_md, source), indent=1) + "\n")
    tmp.replace(path)
    return path


def panel_keys(panel: dict) -> list[str]:
    """Every tagged key (``summary:eval/domain_fid``) a spec panel refers to."""
    keys = []
    for f in KEY_FIELDS[panel["type"]]:
        v = panel[f]
        keys += v if isinstance(v, list) else [v]
    return keys


def runset_filter(runset: dict) -> str:
    """The run set's filters as a ``wandb_workspaces`` filter expression."""
    return " and ".join(f"Metric({f['key']!r}) {f['op']} {f['value']!r}" for f in runset["filters"])


def _key(tagged: str, wr):
    """A tagged spec key as ``wandb_workspaces`` names it: a config or summary key as such, a
    history, media or table key by its plain name."""
    section, _, name = tagged.partition(":")
    if section not in SECTIONS:
        raise ValueError(f"panel key {tagged!r}: expected one of {SECTIONS} before ':'")
    return {"config": wr.Config, "summary": wr.SummaryMetric}.get(section, str)(name)


def _column(tagged: str) -> str:
    section, _, name = tagged.partition(":")
    return f"config:{name}.value" if section == "config" else tagged


def build_report(spec: dict, entity: str, project: str):
    """The ``wandb_workspaces.reports.v2.Report`` of ``spec`` for runs in ``entity/project``;
    with empty ``entity``/``project`` nothing is looked up online (the report can then be checked
    but not saved). Needs the ``wandb-workspaces`` package (extra ``wandb-report``)."""
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError as e:
        raise ImportError("the W&B report needs wandb-workspaces: pip install 'alchemist-pl[wandb-report]'") from e

    blocks = [wr.MarkdownBlock(text=spec["markdown"])] if spec["markdown"] else []
    for section in spec["sections"]:
        rs = section["runset"]
        runset = wr.Runset(
            entity=entity,
            project=project,
            name=rs["name"],
            filters=runset_filter(rs),
            groupby=[g.replace(":", ".", 1) for g in rs["groupby"]],
            pinned_columns=[_column(c) for c in rs["columns"]],
        )
        panels = []
        for p in section["panels"]:
            cls = getattr(wr, p["type"])  # panels without a title field (markdown, table) drop it
            args = {k: v for k, v in p.items() if k != "type" and (k != "title" or k in cls.__dataclass_fields__)}
            for f in KEY_FIELDS[p["type"]]:
                v = args[f]
                args[f] = [_key(k, wr) for k in v] if isinstance(v, list) else _key(v, wr)
            panels.append(cls(**args))
        blocks += [wr.H2(text=section["title"])] + ([wr.P(text=section["text"])] if section["text"] else [])
        blocks.append(wr.PanelGrid(runsets=[runset], panels=panels))
    return wr.Report(
        entity=entity,
        project=project,
        title=spec["title"],
        description=spec["description"],
        blocks=blocks,
        width="fluid",
    )


def save_report(spec: dict, target: str, timeout: int = 30) -> str:
    """Create the report of ``spec`` in ``target`` (``ENTITY/PROJECT``) on the W&B server; returns its URL.

    The runs must be in that project already (``wandb sync -e ENTITY -p PROJECT .../wandb/offline-run-*``).

    Raises:
        ValueError: ``target`` is not ``ENTITY/PROJECT``, or ``spec`` has no W&B run.
        RuntimeError: W&B is unreachable or not logged in (HTTP timeout ``timeout`` s), or runs of
            ``spec`` are missing from ``target`` (named, with the command that syncs them).
    """
    import wandb

    entity, _, project = target.partition("/")
    if not entity or not project or "/" in project:
        raise ValueError(f"--wandb-report wants ENTITY/PROJECT, got {target!r}")
    ids = {r["wandb_id"] for r in spec["runs"] if r["wandb_id"]}
    if not ids:
        raise ValueError("no run has a W&B log (were they run with logger=wandb?); nothing to report")
    if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        raise RuntimeError(f"WANDB_MODE={os.environ['WANDB_MODE']}: the report is saved on the W&B server; unset it")
    try:
        api = wandb.Api(timeout=timeout)
        found = {r.id for r in api.runs(target, filters={"name": {"$in": sorted(ids)}})}
    except Exception as e:  # no key, no network, unknown entity: all end here, named
        raise RuntimeError(
            f"cannot reach W&B to save the report ({type(e).__name__}: {e}); it needs a network connection "
            "and `wandb login`. The offline specification is in wandb-report.json beside report.md"
        ) from e
    missing = [r for r in spec["runs"] if r["wandb_id"] in ids - found]
    if missing:
        dirs = " ".join(sorted({r["offline_dir"] for r in missing}))
        raise RuntimeError(
            f"{len(missing)} of {len(ids)} runs are not in {target}; sync them first: "
            f"wandb sync -e {entity} -p {project} {dirs}"
        )
    report = build_report(spec, entity, project)
    report.save()
    return report.url
