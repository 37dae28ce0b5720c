"""``appo report RESULTS_DIR``: a self-contained HTML report (figures as base64 PNG) and a Markdown summary of a sweep.

Figures (``FIGURES``, each from the tidy table of ``appo sweep``): success vs fault intensity
per selector with 95% confidence bands; BS stability vs intensity per fault kind; oracle rank
agreement per criterion; overhead breakdown; branch-point locations; the fault mix injected.
A figure whose data the sweep did not produce is replaced by a note saying what is missing.
Intensity on the x axes is the effective one: the ``clean`` profile is 0, a profile run
without an explicit intensity is 1 (its preset rates).
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from appo_algo.diagnostics.location import LOCATION_KINDS
from appo_algo.diagnostics.scores import POSITION_SCORERS
from appo_algo.sweep import read_table

Row = dict[str, Any]
Z95 = 1.96


# --- aggregation ----------------------------------------------------------------------------------


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and v is not None and math.isfinite(float(v)) else float("nan")


def mean_ci(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, 95% half-width by the normal approximation, n) over the finite values."""
    x = np.array([v for v in values if math.isfinite(v)], dtype=np.float64)
    if len(x) == 0:
        return float("nan"), float("nan"), 0
    half = Z95 * x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else 0.0
    return float(x.mean()), float(half), len(x)


def effective_intensity(row: Row) -> float:
    """0 for the clean profile; the cell's intensity, or 1 (the preset's rates) when none was set."""
    if row["profile"] == "clean":
        return 0.0
    inten = row.get("intensity")
    return 1.0 if inten is None or (isinstance(inten, float) and math.isnan(inten)) else float(inten)


def per_cell(rows: Sequence[Row], key: str, kind: str = "train") -> dict[str, tuple[Row, float]]:
    """cell id -> (its first row, mean of ``key`` over its steps), for cells of ``kind`` that logged ``key``."""
    acc: dict[str, list[float]] = defaultdict(list)
    first: dict[str, Row] = {}
    for r in rows:
        if r.get("kind") != kind:
            continue
        first.setdefault(r["cell"], r)
        v = _num(r.get(key))
        if math.isfinite(v):
            acc[r["cell"]].append(v)
    return {c: (first[c], float(np.mean(v))) for c, v in acc.items() if v}


def grouped(cells: dict[str, tuple[Row, float]], by: Callable[[Row], Any]) -> dict[Any, tuple[float, float, int]]:
    """Mean and CI over cells grouped by ``by(row)``."""
    groups: dict[Any, list[float]] = defaultdict(list)
    for row, v in cells.values():
        groups[by(row)].append(v)
    return {k: mean_ci(v) for k, v in sorted(groups.items(), key=lambda kv: str(kv[0]))}


# --- figures --------------------------------------------------------------------------------------


@dataclass
class Figure:
    """A rendered figure (PNG bytes) or the reason it could not be drawn."""

    title: str
    png: bytes | None
    note: str


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    _plt().close(fig)
    return buf.getvalue()


def fig_success(rows: Sequence[Row]) -> Figure:
    title = "Success vs fault intensity per selector (train cells, mean over steps, 95% CI over cells)"
    cells = per_cell(rows, "rollout/success_rate")
    if not cells:
        return Figure(title, None, "no train cells with rollout/success_rate in this sweep")
    plt = _plt()
    envs = sorted({r["env"] for r, _ in cells.values()})
    kinds = sorted({r["profile"] for r, _ in cells.values() if r["profile"] != "clean"}) or ["clean"]
    fig, axes = plt.subplots(len(envs), len(kinds), figsize=(4.2 * len(kinds), 3.0 * len(envs)), squeeze=False,
                             sharey=True)
    for row_axes, env in zip(axes, envs):
        for ax, kind in zip(row_axes, kinds):
            sub = {c: rv for c, rv in cells.items() if rv[0]["env"] == env and rv[0]["profile"] in (kind, "clean")}
            for k, selector in enumerate(sorted({r["selector"] for r, _ in sub.values()})):
                stats = grouped({c: rv for c, rv in sub.items() if rv[0]["selector"] == selector}, effective_intensity)
                x = np.array(list(stats)) + 0.015 * (k - 1)  # small offsets keep equal lines visible
                m = np.array([s[0] for s in stats.values()])
                h = np.array([s[1] for s in stats.values()])
                ax.plot(x, m, marker="o", label=selector)
                ax.fill_between(x, m - h, m + h, alpha=0.15)
            ax.set_title(f"{env.split('/')[-1]}: clean → {kind}", fontsize=9)
            ax.set_xlabel("fault intensity")
            ax.set_ylim(-0.05, 1.05)
        row_axes[0].set_ylabel("rollout success rate")
    axes[0][-1].legend(fontsize=8)
    return Figure(title, _png(fig), "")


def fig_stability(rows: Sequence[Row]) -> Figure:
    title = "Branching-Score stability vs intensity per fault kind (appo cells)"
    appo = [r for r in rows if r.get("selector") == "appo"]
    fault = per_cell(appo, "stab/fault_jaccard")
    rescore = per_cell(appo, "stab/rescore_jaccard")
    if not fault and not rescore:
        return Figure(title, None, "no appo train cells logged stab/fault_jaccard or stab/rescore_jaccard")
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key, label in ((axes[0], "jaccard", "top-B Jaccard"), (axes[1], "spearman", "Spearman ρ")):
        for name, metric in (("clean vs fault", f"stab/fault_{key}"), ("re-scoring", f"stab/rescore_{key}")):
            cells = per_cell(appo, metric)
            for kind in sorted({r["profile"] for r, _ in cells.values()}):
                stats = grouped({c: rv for c, rv in cells.items() if rv[0]["profile"] == kind}, effective_intensity)
                x = np.array(list(stats))
                m = np.array([s[0] for s in stats.values()])
                h = np.array([s[1] for s in stats.values()])
                ax.errorbar(x, m, yerr=h, marker="o" if name == "clean vs fault" else "s", capsize=3,
                            linestyle="-" if name == "clean vs fault" else ":", label=f"{name}: {kind}")
        ax.set_xlabel("fault intensity")
        ax.set_ylabel(label)
        ax.set_ylim(-1.05 if key == "spearman" else -0.05, 1.05)
    axes[1].legend(fontsize=7)
    return Figure(title, _png(fig), "")


def fig_oracle(rows: Sequence[Row]) -> Figure:
    title = "Monte Carlo oracle: rank agreement with true impact per criterion (95% CI over cells)"
    criteria = [c for c in POSITION_SCORERS if per_cell(rows, f"oracle/{c}_spearman")]
    if not criteria:
        return Figure(title, None, "no train cell ran the oracle (diagnostics.oracle_step)")
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, stat in zip(axes, ("spearman", "precision")):
        stats = [mean_ci(v for _, v in per_cell(rows, f"oracle/{c}_{stat}").values()) for c in criteria]
        ax.bar(criteria, [s[0] for s in stats], yerr=[s[1] for s in stats], capsize=4,
               color=["C0", "C1", "C2", "C3"][: len(criteria)])
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_ylabel("Spearman ρ (score vs impact)" if stat == "spearman" else "precision@B")
    return Figure(title, _png(fig), "")


OVERHEAD_PARTS = (("generate", "overhead/generate_frac"), ("tools", "overhead/tools_frac"),
                  ("update", "overhead/update_frac"), ("BS scoring + selection", "overhead/bs_frac"))


def fig_overhead(rows: Sequence[Row]) -> Figure:
    title = "Step time breakdown per selector (share of the step, diagnostics excluded)"
    if not per_cell(rows, "overhead/bs_frac"):
        return Figure(title, None, "no train cells logged overhead/ metrics")
    plt = _plt()
    selectors = sorted({r["selector"] for r in rows if r.get("kind") == "train"})
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    bottom = np.zeros(len(selectors))
    for label, key in OVERHEAD_PARTS:
        cells = per_cell(rows, key)
        vals = np.array([mean_ci(v for r, v in cells.values() if r["selector"] == s)[0] for s in selectors])
        vals = np.nan_to_num(vals)
        ax.bar(selectors, vals, bottom=bottom, label=label)
        bottom += vals
    ax.bar(selectors, np.clip(1 - bottom, 0, None), bottom=bottom, label="other", color="lightgrey")
    ax.set_ylabel("share of step wall time")
    ax.legend(fontsize=8, loc="lower right")
    return Figure(title, _png(fig), "")


def fig_locations(rows: Sequence[Row]) -> Figure:
    title = "Where branch points fall, per selector (share of branch points)"
    weights = per_cell(rows, "loc/points")
    selectors = sorted({r["selector"] for r, w in weights.values() if w > 0})
    if not selectors:
        return Figure(title, None, "no branch points were logged (only selector 'none' ran, or no train cells)")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    width = 0.8 / len(selectors)
    for k, s in enumerate(selectors):
        shares = []
        for kind in LOCATION_KINDS:
            cells = per_cell(rows, f"loc/{kind}")
            pairs = [(v, weights[c][1]) for c, (r, v) in cells.items() if r["selector"] == s and c in weights]
            total = sum(w for _, w in pairs)
            shares.append(sum(v * w for v, w in pairs) / total if total else 0.0)
        ax.bar(np.arange(len(LOCATION_KINDS)) + k * width, shares, width, label=s)
    ax.set_xticks(np.arange(len(LOCATION_KINDS)) + 0.4 - width / 2, LOCATION_KINDS)
    ax.set_ylabel("share of branch points")
    ax.legend(fontsize=8)
    return Figure(title, _png(fig), "")


def fault_mix(rows: Sequence[Row]) -> dict[str, dict[str, float]]:
    """profile -> fault kind -> injected faults per episode (mean over train cells and steps)."""
    kinds = sorted({k for r in rows for k in r if k.startswith("faults/") and k.endswith("_per_episode")
                    and k != "faults/per_episode"})
    out: dict[str, dict[str, float]] = {}
    for key in kinds:
        for profile, (m, _, _) in grouped(per_cell(rows, key), lambda r: r["profile"]).items():
            out.setdefault(profile, {})[key[len("faults/"):-len("_per_episode")]] = m
    return out


def fig_faults(rows: Sequence[Row]) -> Figure:
    title = "Fault mix actually injected (faults per episode, train cells)"
    mix = fault_mix(rows)
    if not mix:
        return Figure(title, None, "no faults/<kind>_per_episode metrics: no faults were injected in any train cell")
    plt = _plt()
    kinds = sorted({k for m in mix.values() for k in m})
    profiles = sorted(mix)
    fig, ax = plt.subplots(figsize=(7, 3.4))
    width = 0.8 / len(profiles)
    for k, p in enumerate(profiles):
        ax.bar(np.arange(len(kinds)) + k * width, [mix[p].get(kind, 0.0) for kind in kinds], width, label=p)
    ax.set_xticks(np.arange(len(kinds)) + 0.4 - width / 2, kinds, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("per episode")
    ax.legend(fontsize=8)
    return Figure(title, _png(fig), "")


FIGURES: dict[str, Callable[[Sequence[Row]], Figure]] = {
    "success": fig_success,
    "stability": fig_stability,
    "oracle": fig_oracle,
    "overhead": fig_overhead,
    "locations": fig_locations,
    "faults": fig_faults,
}


# --- headline numbers and tables ------------------------------------------------------------------


def _fmt(m: float, h: float | None = None, pct: bool = False) -> str:
    if not math.isfinite(m):
        return "n/a"
    shown = h is not None and math.isfinite(h) and h >= (5e-5 if pct else 5e-4)  # a CI that rounds to 0 is not shown
    if pct:
        return f"{m:.2%}" + (f" ± {h:.2%}" if shown else "")
    return f"{m:.3f}" + (f" ± {h:.3f}" if shown else "")


def headline(rows: Sequence[Row]) -> list[tuple[str, str]]:
    """The closing numbers: BS overhead, top-B Jaccard clean vs each profile, oracle ρ BS vs entropy, success per selector."""
    appo = [r for r in rows if r.get("selector") == "appo"]
    out = []
    m, h, n = mean_ci(v for _, v in per_cell(appo, "overhead/bs_frac").values())
    out.append(("BS scoring + selection, share of step wall time (appo cells)", f"{_fmt(m, h, pct=True)} (n={n})"))
    m, h, n = mean_ci(v for _, v in per_cell(appo, "overhead/bs_flops_frac").values())
    out.append(("BS FLOPs / model FLOPs of the step (appo cells)", f"{m:.2e} (n={n})" if n else "n/a"))
    extra = [v for _, v in per_cell(rows, "overhead/extra_forward_passes").values()]
    out.append(("extra forward passes made by selectors (max over cells)", f"{max(extra):.0f}" if extra else "n/a"))
    for profile, (m, h, n) in grouped(per_cell(appo, "stab/fault_jaccard"), lambda r: r["profile"]).items():
        out.append((f"BS top-B Jaccard, clean vs {profile} (paired prefixes)", f"{_fmt(m, h)} (n={n})"))
    m, h, n = mean_ci(v for _, v in per_cell(appo, "stab/rescore_jaccard").values())
    out.append(("BS top-B Jaccard, re-scoring after first vs last mini-batch", f"{_fmt(m, h)} (n={n})"))
    m, h, n = mean_ci(v for _, v in per_cell(appo, "stab/omega_degenerate_frac").values())
    out.append(("rollouts with degenerate Ω at step end (appo cells)", f"{_fmt(m, h, pct=True)} (n={n})"))
    for crit in ("appo", "entropy", "tool_boundary", "random"):
        m, h, n = mean_ci(v for _, v in per_cell(rows, f"oracle/{crit}_spearman").values())
        name = "BS" if crit == "appo" else crit
        out.append((f"oracle Spearman ρ, {name} vs true impact", f"{_fmt(m, h)} (n={n})"))
    for sel, (m, h, n) in grouped(per_cell(rows, "rollout/success_rate"), lambda r: r["selector"]).items():
        out.append((f"success rate, selector {sel} (train rollouts)", f"{_fmt(m, h, pct=True)} (n={n} cells)"))
    for sel, (m, h, n) in grouped(per_cell(rows, "branch/success_rate"), lambda r: r["selector"]).items():
        if sel != "none":
            out.append((f"branch success rate, selector {sel}", f"{_fmt(m, h, pct=True)} (n={n} cells)"))
    return out


def scripted_table(rows: Sequence[Row]) -> list[list[str]]:
    """Header + one line per (env, profile, intensity) of the scripted-agent evaluation cells."""
    acc: dict[tuple, list[Row]] = defaultdict(list)
    for r in rows:
        if r.get("kind") == "scripted":
            acc[(r["env"], r["profile"], effective_intensity(r))].append(r)
    table = [["env", "profile", "intensity", "episodes", "success", "tool calls", "clock s", "faults/ep", "infra fail"]]
    for (env, profile, inten), rs in sorted(acc.items()):
        avg = lambda k: float(np.mean([_num(r.get(k)) for r in rs]))  # noqa: E731
        table.append([env, profile, f"{inten:g}", f"{sum(_num(r.get('eval/episodes')) for r in rs):.0f}",
                      f"{avg('eval/success_rate'):.1%}", f"{avg('eval/tool_calls_mean'):.2f}",
                      f"{avg('eval/clock_s_mean'):.2f}", f"{avg('eval/faults_per_episode'):.2f}",
                      f"{avg('eval/infra_failure_frac'):.1%}"])
    return table


# --- writers --------------------------------------------------------------------------------------


def _md_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]])


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


_CSS = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
        "img{max-width:100%;border:1px solid #eee}.note{color:#a33}")


def summary_tables(rows: Sequence[Row]) -> str:
    """The headline numbers and the scripted-agent table as Markdown (what ``appo sweep --report`` prints)."""
    heads = [["measure", "value"], *[[k, v] for k, v in headline(rows)]]
    text = _md_table(heads)
    scripted = scripted_table(rows)
    return text + ("\n\n" + _md_table(scripted) if len(scripted) > 1 else "")


def write_report(results_dir: str | Path, out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``report.html`` (self-contained) and ``report.md`` (+ ``figures/*.png``) into ``out_dir``."""
    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir
    rows = read_table(results_dir)
    if not rows:
        raise ValueError(f"{results_dir}: the results table is empty; did the sweep finish any cell?")
    figures = {name: fn(rows) for name, fn in FIGURES.items()}
    heads = [["measure", "value"], *[[k, v] for k, v in headline(rows)]]
    scripted = scripted_table(rows)
    spec_path = results_dir / "sweep.yaml"
    spec_text = spec_path.read_text() if spec_path.exists() else ""
    n_cells = len({r["cell"] for r in rows})
    intro = (f"{n_cells} cells, {len(rows)} rows (one per cell and step) from <code>{html.escape(str(results_dir))}</code>. "
             "Intensity 0 is the clean profile; a profile without an explicit intensity counts as 1.")

    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>APPO stress-lab report</title>"
             f"<style>{_CSS}</style></head><body><h1>APPO stress-lab report</h1><p>{intro}</p>",
             "<h2>Headline numbers</h2>", _html_table(heads)]
    md = ["# APPO stress-lab report", "", f"{n_cells} cells, {len(rows)} rows from `{results_dir}`.", "",
          "## Headline numbers", "", _md_table(heads), ""]
    for name, fig in figures.items():
        parts.append(f"<h2>{html.escape(fig.title)}</h2>")
        md += [f"## {fig.title}", ""]
        if fig.png is None:
            parts.append(f"<p class='note'>Not drawn: {html.escape(fig.note)}.</p>")
            md += [f"Not drawn: {fig.note}.", ""]
            continue
        (out_dir / "figures" / f"{name}.png").write_bytes(fig.png)
        b64 = base64.b64encode(fig.png).decode()
        parts.append(f"<img alt='{html.escape(name)}' src='data:image/png;base64,{b64}'>")
        md += [f"![{name}](figures/{name}.png)", ""]
    parts.append("<h2>Scripted agent (evaluation-only cells)</h2>")
    md += ["## Scripted agent (evaluation-only cells)", ""]
    if len(scripted) > 1:
        parts.append(_html_table(scripted))
        md += [_md_table(scripted), ""]
    else:
        parts.append("<p class='note'>No scripted cells in this sweep (add <code>scripted</code> to kinds).</p>")
        md += ["No scripted cells in this sweep.", ""]
    if spec_text:
        parts.append(f"<h2>Sweep spec</h2><pre>{html.escape(spec_text)}</pre>")
        md += ["## Sweep spec", "", "```yaml", spec_text.rstrip(), "```", ""]
    parts.append("</body></html>")
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    html_path.write_text("\n".join(parts))
    md_path.write_text("\n".join(md))
    (out_dir / "headline.json").write_text(json.dumps(dict(headline(rows)), indent=1))
    return html_path, md_path
