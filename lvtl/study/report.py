"""The coordinator's cross-site report: ``report.json``, ``report.md`` and PNG plots.

Input: a :class:`~lvtl.study.results.ResultsDoc` (the sites' results sections). Added under
``summary``: per site and pooled over the sites (case-weighted, from the per-case Dice) the
Dice of each arm at each training size (the paper's Figure 4), baseline against the best
fine-tuned run, the smallest training size at which transfer reaches its plateau (within
``PLATEAU`` of its best mean Dice), and the failed sites with their reasons. The thickness
Pearson table (the paper's Table 1) is per site, with its 95% intervals.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lvtl.config import SiteRole
from lvtl.errors import ConfigError
from lvtl.io.atomic import atomic_path, write_text
from lvtl.labels import KEYS
from lvtl.study.protocol import Arm
from lvtl.study.results import (
    PHASES,
    REASON_TEXT,
    STATS,
    Reason,
    ResultsDoc,
    Run,
    SiteResults,
    Status,
)

PLATEAU = 0.01  # mean Dice within this of transfer's best counts as the plateau


def _curves(runs: list[Run]) -> dict:
    out: dict = {}
    for r in runs:
        out.setdefault(str(r.arm), {})[r.train_size] = {
            **{k: getattr(r.dice, k).mean for k in KEYS}, "mean": r.mean_dice()}
    return out


def _plateau(curve: dict) -> int | None:
    if not curve:
        return None
    best = max(v["mean"] for v in curve.values())
    return min(s for s, v in curve.items() if v["mean"] >= best - PLATEAU)


def _pooled(sites: dict[str, SiteResults]) -> dict:
    """Per arm and size: case-weighted mean Dice over the sites that ran it."""
    acc: dict = {}
    for sec in sites.values():
        for r in sec.runs:
            cell = acc.setdefault(str(r.arm), {}).setdefault(r.train_size, {k: [] for k in KEYS})
            for k in KEYS:
                cell[k].extend(getattr(r.dice_per_case, k))
    return {arm: {size: {**{k: float(np.mean(v[k])) if v[k] else None for k in KEYS},
                         "n": len(v[next(reversed(KEYS))])}
                  for size, v in sorted(sizes.items())}
            for arm, sizes in acc.items()}


def summarize(doc: ResultsDoc) -> dict:
    """Per site and pooled: Dice by arm and size, the transfer plateau, baseline against the
    best fine-tuned run, and the failed sites with their reasons."""
    ok = {n: s for n, s in doc.sites.items() if s.status == Status.OK}
    per_site = {}
    for name, sec in ok.items():
        curves = _curves(sec.runs)
        base = curves.get(Arm.BASELINE, {}).get(0)
        tuned = max((v["mean"] for a in Arm if a.trains for v in curves.get(a, {}).values()),
                    default=None)
        per_site[name] = {"dice_by_size": curves,
                          "transfer_plateau_size": _plateau(curves.get(Arm.TRANSFER, {})),
                          "baseline_mean_dice": base["mean"] if base else None,
                          "best_finetuned_mean_dice": tuned}
    return {"sites_ok": sorted(ok),
            "sites_failed": {n: s.reason for n, s in doc.sites.items()
                             if s.status == Status.FAILED},
            "sites_pending": sorted(n for n, s in doc.sites.items() if s.status == Status.PENDING),
            "per_site": per_site, "pooled_dice_by_size": _pooled(ok)}


def _fmt(v, digits=3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def render_markdown(doc: ResultsDoc, summary: dict) -> str:
    lines = ["# Cross-site transfer-learning report", ""]
    if summary["sites_pending"]:
        lines += ["## Pending sites (no results yet)", ""]
        lines += [f"- **{n}**" for n in summary["sites_pending"]] + [""]
    if summary["sites_failed"]:
        lines += ["## Failed sites", ""]
        lines += [f"- **{n}**: {REASON_TEXT[Reason(why)]} (`{why}`)"
                  for n, why in summary["sites_failed"].items()] + [""]
    for name in summary["sites_ok"]:
        sec, ps = doc.sites[name], summary["per_site"][name]
        owner = (" (the model owner: the model on its own site's data, not a transfer)"
                 if sec.role == SiteRole.MODEL_OWNER else "")
        lines += [f"## {name}{owner}", "", f"{sec.n_test} test cases; transfer plateau at "
                  f"{ps['transfer_plateau_size']} training cases; baseline mean Dice "
                  f"{_fmt(ps['baseline_mean_dice'])}, best fine-tuned "
                  f"{_fmt(ps['best_finetuned_mean_dice'])}.", "",
                  "| arm | cases | blood pool mean / max | LVM mean / max | ED r median / p95 "
                  "/ max | ES r median / p95 / max |", "|---|---:|---|---|---|---|"]
        for r in sec.runs:
            d = r.dice
            rs = [" / ".join(_fmt(getattr(getattr(r.thickness_r, p), s), 2) for s in STATS)
                  for p in PHASES]
            lines.append(f"| {r.arm} | {r.train_size} | {_fmt(d.blood_pool.mean)} "
                         f"/ {_fmt(d.blood_pool.max)} | {_fmt(d.lvm.mean)} / "
                         f"{_fmt(d.lvm.max)} | {rs[0]} | {rs[1]} |")
        lines.append("")
    pooled = summary["pooled_dice_by_size"]
    if pooled:
        lines += ["## Pooled over the sites (case-weighted)", "",
                  "| arm | cases | blood pool | LVM | test cases |", "|---|---:|---:|---:|---:|"]
        for arm, sizes in pooled.items():
            for size, v in sizes.items():
                lines.append(f"| {arm} | {size} | {_fmt(v['blood_pool'])} | {_fmt(v['lvm'])} "
                             f"| {v['n']} |")
        lines.append("")
    return "\n".join(lines)


def _plot(summary: dict, path: Path) -> Path | None:
    # deferred: matplotlib takes a second to import, and only the report draws
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = summary["per_site"]
    if not sites:
        return None
    fig, axes = plt.subplots(1, len(sites), figsize=(5 * len(sites), 4), squeeze=False)
    for ax, (name, ps) in zip(axes[0], sites.items(), strict=True):
        for arm, curve in ps["dice_by_size"].items():
            sizes = sorted(curve)
            if arm == Arm.BASELINE:
                ax.axhline(curve[0]["mean"], ls="--", color="grey", label="baseline (no tuning)")
            else:
                ax.plot(sizes, [curve[s]["mean"] for s in sizes], "o-", label=arm)
        ax.set(title=name, xlabel="training cases", ylabel="mean Dice (blood pool, LVM)",
               ylim=(0, 1))
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def write_report(doc: ResultsDoc | dict, out_dir: str | Path) -> Path:
    """Write report.json (the document plus ``summary``), report.md and dice_by_size.png into
    ``out_dir``; returns the path of report.json. ``doc`` may be given in its JSON form."""
    if isinstance(doc, dict):
        doc = ResultsDoc.from_dict(doc)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(doc)
    full = {**doc.to_dict(), "summary": summary}
    _plot(summary, out / "dice_by_size.png")
    write_text(out / "report.md", render_markdown(doc, summary) + "\n")
    write_text(out / "report.json", json.dumps(full, indent=1) + "\n")
    return out / "report.json"


def merge_results(paths: list[str | Path]) -> ResultsDoc:
    """One report document from several results files (each a ``lvtl.report/1`` doc)."""
    sites: dict[str, SiteResults] = {}
    for p in paths:
        try:
            raw = json.loads(Path(p).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{p}: not a readable JSON results file ({e})") from None
        for name, sec in ResultsDoc.from_dict(raw, str(p)).sites.items():
            if name in sites:
                raise ConfigError(f"{p}: site {name!r} appears in two results files")
            sites[name] = sec
    return ResultsDoc(sites=sites)
