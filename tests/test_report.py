"""report.py on a constructed results table with known values: figures embed, headline numbers are the right means."""
from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ci_policy import skip_or_fail

from appo_algo.report import FIGURES, headline, write_report
from appo_algo.sweep import write_table

SELECTORS = ("appo", "entropy", "none")
PROFILES = ("clean", "flaky", "hostile")


def cell_rows(selector: str, profile: str, seed: int) -> list[dict]:
    cell = f"train-X-{profile}-{selector}-s{seed}"
    base = {"cell": cell, "kind": "train", "env": "appo/CodeExec-v0", "profile": profile, "intensity": None,
            "selector": selector, "seed": seed}
    rows = []
    for step in (1, 2):
        r = {**base, "step": step, "rollout/success_rate": 0.5 if selector == "appo" else 0.25,
             "branch/success_rate": 0.4, "overhead/bs_frac": 0.01 * step, "overhead/bs_flops_frac": 1e-6,
             "overhead/generate_frac": 0.6, "overhead/tools_frac": 0.2, "overhead/update_frac": 0.1,
             "overhead/extra_forward_passes": 0.0, "stab/omega_degenerate_frac": 0.5,
             "stab/rescore_jaccard": 0.8, "stab/rescore_spearman": 0.9, "faults/error_per_episode": 0.0 if profile == "clean" else 0.3}
        if selector != "none":
            r.update({"loc/points": 4.0, "loc/after_tool": 0.25, "loc/ws_punct": 0.0, "loc/tool_args": 0.5,
                      "loc/answer": 0.0, "loc/reasoning": 0.25})
        if profile != "clean":
            r.update({"stab/fault_jaccard": 0.6 if profile == "flaky" else 0.2, "stab/fault_spearman": 0.5})
        if step == 2:
            r.update({f"oracle/{c}_{s}": v for c, v in (("appo", 0.3), ("entropy", 0.1), ("tool_boundary", 0.0),
                                                        ("random", -0.05)) for s in ("spearman", "precision")})
        rows.append(r)
    return rows


def scripted_row(profile: str) -> dict:
    return {"cell": f"scripted-{profile}", "kind": "scripted", "env": "appo/CodeExec-v0", "profile": profile,
            "intensity": None, "selector": "scripted", "seed": 0, "step": 0, "eval/episodes": 10.0,
            "eval/success_rate": 0.9, "eval/tool_calls_mean": 1.0, "eval/clock_s_mean": 0.5,
            "eval/faults_per_episode": 0.2, "eval/infra_failure_frac": 0.1}


@pytest.fixture
def results(tmp_path: Path) -> Path:
    rows = [r for s in SELECTORS for p in PROFILES for seed in (0, 1) for r in cell_rows(s, p, seed)]
    rows += [scripted_row(p) for p in PROFILES]
    write_table(rows, tmp_path)
    return tmp_path


def test_report_embeds_every_figure_as_png(results: Path):
    html_path, md_path = write_report(results)
    text = html_path.read_text()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    assert len(images) == len(FIGURES)
    for b64 in images:
        assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Not drawn" not in text
    md = md_path.read_text()
    for name in FIGURES:
        assert f"figures/{name}.png" in md and (results / "figures" / f"{name}.png").exists()
    assert "| appo/CodeExec-v0 | flaky | 1 | 10 | 90.0% |" in md  # the scripted-agent table


def test_headline_numbers_are_the_means_of_the_table(results: Path):
    from appo_algo.sweep import read_table

    h = dict(headline(read_table(results)))
    assert h["BS scoring + selection, share of step wall time (appo cells)"].startswith("1.50% (n=6)")
    assert h["BS top-B Jaccard, clean vs flaky (paired prefixes)"] == "0.600 (n=2)"
    assert h["BS top-B Jaccard, clean vs hostile (paired prefixes)"] == "0.200 (n=2)"
    assert h["oracle Spearman ρ, BS vs true impact"] == "0.300 (n=18)"
    assert h["oracle Spearman ρ, entropy vs true impact"] == "0.100 (n=18)"
    assert h["success rate, selector appo (train rollouts)"] == "50.00% (n=6 cells)"
    assert h["success rate, selector none (train rollouts)"] == "25.00% (n=6 cells)"
    assert h["extra forward passes made by selectors (max over cells)"] == "0"


def test_missing_data_is_reported_not_drawn(tmp_path: Path):
    write_table([scripted_row("clean")], tmp_path)
    html_path, _ = write_report(tmp_path)
    text = html_path.read_text()
    assert "data:image/png" not in text
    assert text.count("Not drawn:") == len(FIGURES)


def test_empty_results_folder_is_an_error(tmp_path: Path):
    with pytest.raises(ValueError, match="appo sweep"):
        write_report(tmp_path)


@pytest.mark.slow
def test_report_renders_in_headless_chromium(results: Path):
    if not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")):
        skip_or_fail("Chromium is not installed (apt-get install -y chromium)")
    html_path, _ = write_report(results)
    script = Path(__file__).resolve().parents[1] / "scripts" / "check_report.py"
    out = subprocess.run([sys.executable, str(script), str(html_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"all {len(FIGURES)} images loaded" in out.stdout
    assert (results / "report_screenshot.png").stat().st_size > 10_000
