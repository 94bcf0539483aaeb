"""The ablations' statistics and tables: per variant the mean and spread over seeds, ours beside the paper's,
and for each of the paper's claims whether our gap exceeds the seed spread.

Spread is the range over seeds (max - min). A gap between two variants *counts* when the difference of their
means exceeds the larger of their two spreads: with 2-3 seeds a standard deviation is itself too noisy to
lean on, and a gap the seeds alone can produce is not evidence. All numbers are COCO AP in % (as the paper):
mask AP ('segm'), box AP ('bbox') or keypoint AP ('keypoints', AP^kp: OKS in place of IoU, paper §5).
"""
from __future__ import annotations

from .ablate_tables import TABLES

STATS = ("AP", "AP50", "AP75")
METRIC_NAME = {"segm": "mask", "bbox": "box", "keypoints": "keypoint"}     # COCOeval's iou types, in words


def _stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return {"seeds": [], "mean": None, "spread": None}
    return {"seeds": values, "mean": round(sum(values) / len(values), 2),
            "spread": round(max(values) - min(values), 2) if len(values) > 1 else None}


def summarise(tables, layout, results) -> dict:
    """``{table: summary}``: for each variant and metric ('segm', 'bbox', 'keypoints'), our per-seed values, mean and
    spread of AP/AP50/AP75, the paper's; and each comparison's gaps (ours, paper's, whether ours counts)."""
    out = {}
    for t in tables:
        table = TABLES[t]
        variants = []
        for v in table.variants:
            ids = layout[t][v.name]
            ours = {m: {s: _stats([results[r].get(m, {}).get(s) for r in ids]) for s in STATS} for m in table.metrics}
            variants.append({"name": v.name, "overrides": v.overrides, "runs": ids, "ours": ours,
                             "paper": {m: dict(zip(STATS, v.paper.get(m, (None,) * 3))) for m in table.metrics}})
        by_name = {v["name"]: v for v in variants}
        comparisons = []
        for better, worse in table.comparisons:
            a, b = by_name[better], by_name[worse]
            gaps = {}
            for m in table.metrics:
                for s in STATS:
                    oa, ob = a["ours"][m][s], b["ours"][m][s]
                    pa, pb = a["paper"][m][s], b["paper"][m][s]
                    ours = None if oa["mean"] is None or ob["mean"] is None else round(oa["mean"] - ob["mean"], 2)
                    noise = max(x for x in (oa["spread"], ob["spread"], None) if x is not None) \
                        if (oa["spread"] is not None or ob["spread"] is not None) else None
                    gaps[f"{m} {s}"] = {"ours": ours, "paper": None if pa is None or pb is None else round(pa - pb, 1),
                                        "spread": noise,
                                        "counts": None if ours is None or noise is None else abs(ours) > noise}
            comparisons.append({"better": better, "worse": worse, "gaps": gaps})
        first = results[variants[0]["runs"][0]]
        out[t] = {"title": table.title, "config": table.config, "metrics": list(table.metrics),
                  "paper_note": table.paper_note, "seeds": len(variants[0]["runs"]),
                  "iterations": first["iterations"], "image_size": first["config"]["min_size"],
                  "variants": variants, "comparisons": comparisons}
    return out


def _fmt(stat):
    if stat["mean"] is None:
        return "–"
    return f"{stat['mean']:.1f}" + (f" ±{stat['spread'] / 2:.1f}" if stat["spread"] is not None else "")


def _num(x, sign=False):
    return "–" if x is None else (f"{x:+.1f}" if sign else f"{x:.1f}")


def markdown_table(summary) -> str:
    """One table as markdown: per variant ours (mean ±half the spread) beside the paper's, then the gaps."""
    lines = [f"### {summary['title']}", "",
             f"Ours: `{summary['config']}`, {summary['image_size']} px, {summary['iterations']} iterations, "
             f"{summary['seeds']} seed{'s' if summary['seeds'] != 1 else ''} (mean ±half the range). "
             f"Paper: {summary['paper_note']}.", ""]
    if summary.get("command"):     # the invocation that made this table (tables merge across invocations)
        on = f", data {summary['data']}" if summary.get("data") else ""
        lines += [f"Made by `{summary['command']}` at commit `{summary.get('commit')}`, finished "
                  f"{summary.get('finished')}{on}.", ""]
    head = ["variant"]
    for m in summary["metrics"]:
        head += [f"{METRIC_NAME[m]} AP / AP50 / AP75, ours", f"{METRIC_NAME[m]}, paper"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in summary["variants"]:
        row = [v["name"]]
        for m in summary["metrics"]:
            row += [" / ".join(_fmt(v["ours"][m][s]) for s in STATS),
                    " / ".join(_num(v["paper"][m][s]) for s in STATS)]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    for c in summary["comparisons"]:
        parts = []
        for key, g in c["gaps"].items():
            verdict = ("exceeds the seed spread" if g["counts"] else "within the seed spread") \
                if g["counts"] is not None else "one seed: no spread to judge"
            parts.append(f"{METRIC_NAME[key.split()[0]]} {key.split()[1]} ours {_num(g['ours'], True)} "
                         f"({verdict}), paper {_num(g['paper'], True)}")
        lines.append(f"- **{c['better']} − {c['worse']}**: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def write_markdown(record, path) -> str:
    """``ablations.md``: how the last invocation ran (command, commit, wall time), then every table, each with
    the command and commit that made it."""
    head = ["# The paper's ablations, trained in miniature", "",
            f"Last command: `{record['command']}`  ", f"Commit: `{record['commit']}`  ",
            f"Finished: {record['finished']}; this command took {record['elapsed_s'] / 60:.1f} min with "
            f"{record['jobs']} job(s) in parallel; the runs' own wall times add up to "
            f"{record['wall_time_s'] / 60:.1f} min", ""]
    text = "\n".join(head) + "\n" + "\n".join(markdown_table(s) for s in record["tables"].values())
    with open(path, "w") as f:
        f.write(text)
    return text
