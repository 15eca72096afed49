"""The W&B report's specification against what real offline W&B runs logged.

A smoke pipeline (rate, prune, alchemist and random training) plus two training runs (another
seed, another keep_ratio), all logged with ``logger=wandb`` offline, then ``alchemist-compare``.
"""

import json

import pytest
from hydra import compose, initialize_config_dir

from alchemist_pl import compare, wandb_log, wandb_report
from alchemist_pl.stages import run

from .conftest import CONF, DATA_DIR

pytestmark = pytest.mark.slow  # a smoke pipeline and two training runs logged to W&B (~45 s CPU)

RUNS = {  # folder -> overrides on top of the smoke settings
    "pipeline": ["+experiment=pipeline", "pipeline.compare=[shift_gsample,random]"],
    "random-s1": ["+experiment=baseline", "method=random", "keep_ratio=0.5", "seed=1"],
    "random-k0.25": ["+experiment=baseline", "method=random", "keep_ratio=0.25"],
}


@pytest.fixture(scope="module")
def logged(tmp_path_factory, emoji_dir):
    out = tmp_path_factory.mktemp("wandb_runs")
    env = {"WANDB_SILENT": "true", "WANDB_CACHE_DIR": str(out / ".cache"), "WANDB_DATA_DIR": str(out / ".data")}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        for name, overrides in RUNS.items():
            with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
                cfg = compose(
                    "config",
                    overrides=[
                        *overrides,
                        "debug=smoke",
                        "logger=wandb",
                        "rate.max_epochs=1",
                        "task_name=wbreport",
                        f"paths.data_dir={DATA_DIR}",
                        f"paths.output_dir={out / name}",
                        "corruption=web",
                        "corruption.pool_size=600",
                    ],
                )
            run(cfg)
    compare.main([str(out)])
    spec = json.loads((out / wandb_report.SPEC_NAME).read_text())
    offline = {r.id: r for r in map(wandb_log.read_run, out.rglob("offline-run-*"))}
    return out, spec, offline


def _selected(runset: dict, offline: dict) -> list:
    """The offline runs the run set's filters select, applied to what each run logged."""
    field = {"JobType": lambda r: r.job_type, "ID": lambda r: r.id, "Group": lambda r: r.group}
    test = {"==": lambda a, b: a == b, "in": lambda a, b: a in b}
    return [
        r for r in offline.values() if all(test[f["op"]](field[f["key"]](r), f["value"]) for f in runset["filters"])
    ]


def _logged(run, tagged: str) -> bool:
    section, _, key = tagged.partition(":")
    if section == "media":
        return run.media.get(key) in ("images/separated", "image-file")
    if section == "table":
        return run.media.get(key) == "table-file"
    return key in {"history": run.history, "summary": run.summary, "config": run.config}[section]


def test_offline_log_holds_what_the_summary_says(logged):
    """The log reader against an independent source: the eval curve each train summary records."""
    out, spec, offline = logged
    train = [r for r in spec["runs"] if r["stage"] == "train"]
    assert len(train) == 4 and all(r["wandb_id"] in offline for r in train)
    for entry in train:
        summary = json.loads(open(entry["summary"]).read())
        wb = offline[entry["wandb_id"]]
        assert (wb.group, wb.job_type, wb.project) == ("wbreport", "train", "alchemist-pl")
        assert (wb.config["method"], wb.config["keep_ratio"], wb.config["seed"]) == (
            summary["method"],
            summary["keep_ratio"],
            summary["seed"],
        )
        fid = {}
        for rec in wandb_log.records(wb.path):
            if rec.WhichOneof("record_type") == "history":
                row = {".".join(i.nested_key) or i.key: json.loads(i.value_json) for i in rec.history.item}
                if "eval/domain_fid" in row:
                    fid[row["trainer/global_step"]] = row["eval/domain_fid"]
        assert fid == {p["step"]: pytest.approx(p["domain_fid"]) for p in summary["metrics"]["eval_curve"]}


def test_every_panel_key_was_logged_by_every_run_it_shows(logged):
    out, spec, offline = logged
    titles = {s["title"] for s in spec["sections"]}
    assert titles == {
        "Metric vs keep_ratio",
        "Evaluation curves",
        "Sample grids",
        "Selected percentiles",
        "Rating quality",
    }
    stages = {r["wandb_id"]: r["stage"] for r in spec["runs"]}
    for section in spec["sections"]:
        rs = section["runset"]
        runs = _selected(rs, offline)
        stage = rs["filters"][0]["value"]
        assert runs and sorted(r.id for r in runs) == sorted(i for i, s in stages.items() if s == stage)
        for key in rs["groupby"] + rs["columns"]:
            assert all(_logged(r, key) for r in runs), (section["title"], key)
        for panel in section["panels"]:
            for key in wandb_report.panel_keys(panel):
                missing = [r.name for r in runs if not _logged(r, key)]
                assert not missing, f"{section['title']} / {panel['title']}: {key} not logged by {missing}"


def test_one_line_per_method_and_keep_ratio_with_seeds_grouped(logged):
    """The grouped run sets split the runs exactly as the comparison table does."""
    out, spec, offline = logged
    table = compare.group_runs(compare.load_summaries([out]))
    by_id = {r["wandb_id"]: r for r in spec["runs"]}
    by_summary = {r["summary"]: r["wandb_id"] for r in spec["runs"]}
    expected = sorted(sorted(by_summary[r["_path"]] for r in runs) for runs in table.values())
    assert len(table) == 3 and max(len(v) for v in table.values()) == 2  # random @0.5: seeds 0 and 1
    for section in spec["sections"][:2]:
        rs = section["runset"]
        lines = {}
        for r in _selected(rs, offline):
            lines.setdefault(tuple(r.config[g.split(":", 1)[1]] for g in rs["groupby"]), []).append(r.id)
        assert sorted(sorted(v) for v in lines.values()) == expected
        assert all(by_id[i]["stage"] == "train" for v in lines.values() for i in v)
        for panel in section["panels"]:
            if panel["type"] in ("LinePlot", "BarPlot"):
                assert (panel["groupby_aggfunc"], panel["groupby_rangefunc"]) == ("mean", "stddev")


def test_rating_quality_table_lists_every_corruption_kind(logged):
    out, spec, offline = logged
    rate = next(r for r in spec["runs"] if r["stage"] == "rate")
    quality = json.loads(open(rate["summary"]).read())["metrics"]["rating_quality"]
    panel = next(p for s in spec["sections"] for p in s["panels"] if p["type"] == "MarkdownPanel")
    lines = panel["markdown"].splitlines()
    header, auroc = (next(line for line in lines if line.startswith(start)) for start in ("| | all |", "| AUROC |"))
    kinds = [c.strip() for c in header.split("|")[3:-1]]
    assert sorted(kinds) == sorted(k for k in quality["per_kind"] if k != "clean")
    values = [float(c) for c in auroc.split("|")[2:-1]]
    assert values == [round(quality["auroc"], 3)] + [round(quality["per_kind"][k]["auroc"], 3) for k in kinds]


def test_report_builds_offline_with_the_spec_keys(logged):
    out, spec, offline = logged
    report = wandb_report.build_report(spec, entity="", project="")  # no entity: nothing looked up online
    dumped = report._to_model().model_dump(by_alias=True, exclude_none=True)  # what save() uploads
    grids = [b for b in dumped["spec"]["blocks"] if b["type"] == "panel-grid"]
    assert len(grids) == len(spec["sections"])
    for grid, section in zip(grids, spec["sections"]):
        panels = grid["metadata"]["panelBankSectionConfig"]["panels"]
        assert len(panels) == len(section["panels"])
        text = json.dumps(panels)
        for panel in section["panels"]:
            for key in wandb_report.panel_keys(panel):
                assert json.dumps(key.split(":", 1)[1])[1:-1] in text
        assert (
            grid["metadata"]["runSets"][0]["filters"]["filters"][1]["value"] == section["runset"]["filters"][1]["value"]
        )


def test_saving_offline_fails_with_a_clear_message(logged, tmp_path, monkeypatch):
    out, spec, offline = logged
    with pytest.raises(ValueError, match="ENTITY/PROJECT"):
        wandb_report.save_report(spec, "just-a-project")
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(RuntimeError, match="WANDB_MODE=offline"):
        wandb_report.save_report(spec, "me/alchemist-pl")
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: not logged in
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path))
    with pytest.raises(RuntimeError, match="wandb login"):
        wandb_report.save_report(spec, "me/alchemist-pl", timeout=5)
