"""The bench report: a summary table, and score against latency per model (PNG, and HTML that embeds it).

The HTML is one self-contained file (the plot is an inline base64 PNG, the style inline), so it
opens on a machine without network. Plotting needs matplotlib, from the ``[bench]`` extra.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path

from zoe_edge.bench.scoring import Estimate
from zoe_edge.bench.suite import SuiteResult

# the columns of the summary table: (suite, score name, heading)
HEADLINE = (
    ("latency", "load_ms", "load ms"),
    ("latency", "ttft_ha_cold_ms", "TTFT HA cold ms"),
    ("latency", "ttft_ha_warm_ms", "TTFT HA warm ms"),
    ("latency", "ttft_short_cold_ms", "TTFT short ms"),
    ("latency", "prompt_tps", "prompt tok/s"),
    ("latency", "gen_tps", "gen tok/s"),
    ("latency", "e2e_ms", "e2e ms (p50)"),
    ("latency", "e2e_p95_ms", "e2e ms (p95)"),
    ("hallucination", "correct", "correct"),
    ("hallucination", "hallucination_rate", "halluc. rate"),
    ("hallucination", "abstention_rate", "abstain"),
    ("hallucination", "correct_given_attempted", "correct|attempted"),
    ("hallucination", "score", "halluc. score"),
    ("tools", "score", "tools (grammar)"),
    ("tools", "free_score", "tools (free)"),
    ("tools", "parse_failures", "parse fail"),
    ("tools", "free_parse_failures", "parse fail (free)"),
    ("tools", "false_calls", "false calls"),
    ("assist", "command_success", "assist commands"),
    ("assist", "truthful_answers", "assist truthful"),
    ("assist", "raw_command_success", "commands (raw)"),
    ("assist", "raw_truthful_answers", "truthful (raw)"),
)
# the assist suite's table: one row per (model, pass), these columns
ASSIST_COLUMNS = (
    ("command_success", "commands"),
    ("truthful_answers", "truthful answers"),
    ("chat_ok", "chit-chat"),
    ("loops", "loops"),
    ("errors", "errors"),
    ("turn_ms", "turn ms (p50)"),
    ("turn_p95_ms", "turn ms (p95)"),
)


def assist_rows(results: Sequence[SuiteResult]) -> tuple[list[str], list[list[str]]]:
    """Heading and one row per model and pass (raw, the model itself, each route) of the assist suite."""
    heading = ["model", "pass", "sent as", *(h for _, h in ASSIST_COLUMNS)]
    rows = []
    for r in results:
        if r.suite != "assist":
            continue
        passes = r.settings.get("passes") or {"model": r.model}
        for label, sent in passes.items():
            prefix = "" if label == "model" else f"{label}_"
            rows.append([r.model, label, str(sent), *(fmt(r.scores.get(prefix + n)) for n, _ in ASSIST_COLUMNS)])
    return heading, rows


def _aligned(heading: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [heading, *rows]) for i in range(len(heading))]
    return "\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in [heading, *rows])


def assist_table(results: Sequence[SuiteResult], markdown: bool = False) -> str:
    """The assist suite's per-pass table ("" when no assist result); ``markdown`` for RESULTS.md."""
    heading, rows = assist_rows(results)
    if not rows:
        return ""
    if markdown:
        lines = ["| " + " | ".join(heading) + " |", "|" + "---|" * len(heading)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    return _aligned(heading, rows)


def by_model(results: Sequence[SuiteResult]) -> dict[str, dict[str, dict[str, Estimate]]]:
    out: dict[str, dict[str, dict[str, Estimate]]] = {}
    for r in results:
        out.setdefault(r.model, {})[r.suite] = r.scores
    return out


def fmt(est: Estimate | None) -> str:
    if est is None:
        return "-"
    if est.low is not None and est.high is not None:
        return f"{est.value:.2f} [{est.low:.2f}, {est.high:.2f}]"
    return f"{est.value:g}"


def table_rows(results: Sequence[SuiteResult]) -> tuple[list[str], list[list[str]]]:
    """Heading and one row per model, only the columns some model has."""
    models = by_model(results)
    cols = [(s, n, h) for s, n, h in HEADLINE if any(n in m.get(s, {}) for m in models.values())]
    heading = ["model", *(h for _, _, h in cols)]
    rows = [[name, *(fmt(suites.get(s, {}).get(n)) for s, n, _ in cols)] for name, suites in models.items()]
    return heading, rows


def text_table(results: Sequence[SuiteResult]) -> str:
    heading, rows = table_rows(results)
    out = _aligned(heading, rows)
    assist = assist_table(results)
    return out + ("\n\nassist suite, per pass:\n" + assist if assist else "")


def plot_png(results: Sequence[SuiteResult]) -> bytes:
    """Score against latency (warm HA end-to-end p50), one point per model, 95% intervals as error bars."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("the report's plot needs matplotlib: pip install 'zoe-edge[bench]'") from None
    models = by_model(results)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (suite, name, label) in zip(
        axes,
        (("tools", "score", "tool-call score (grammar)"), ("hallucination", "score", "hallucination score")),
        strict=True,
    ):
        for model, suites in models.items():
            lat = suites.get("latency", {}).get("e2e_ms")
            score = suites.get(suite, {}).get(name)
            if lat is None or score is None:
                continue
            err = None
            if score.low is not None and score.high is not None:
                err = [[score.value - score.low], [score.high - score.value]]
            ax.errorbar([lat.value], [score.value], yerr=err, fmt="o", capsize=4, label=model)
            ax.annotate(model, (lat.value, score.value), textcoords="offset points", xytext=(6, 6), fontsize=8)
        ax.set_xlabel("end-to-end latency, HA prompt warm (ms, p50)")
        ax.set_ylabel(label)
        ax.set_title(f"{label} vs latency")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def html_report(results: Sequence[SuiteResult], png: bytes, command: str) -> str:
    heading, rows = table_rows(results)
    th = "".join(f"<th>{html.escape(h)}</th>" for h in heading)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    settings = "".join(
        f"<tr><td>{html.escape(r.model)}</td><td>{html.escape(r.suite)}</td><td>{html.escape(r.at)}</td>"
        f"<td><code>{html.escape(', '.join(f'{k}={v}' for k, v in r.settings.items()))}</code></td></tr>"
        for r in results
    )
    img = base64.b64encode(png).decode("ascii")
    a_head, a_rows = assist_rows(results)
    assist = ""
    if a_rows:
        a_th = "".join(f"<th>{html.escape(h)}</th>" for h in a_head)
        a_body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in a_rows)
        assist = f"\n<h2>Assist, per pass</h2>\n<table><tr>{a_th}</tr>{a_body}</table>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>zoe-edge bench</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px;text-align:right}}td:first-child{{text-align:left}}
code{{font-size:12px}}</style></head><body>
<h1>zoe-edge bench</h1>
<p>Command: <code>{html.escape(command)}</code></p>
<p>Proportions show the value and its 95% Wilson interval; latencies are medians of wall-clock times.</p>
<table><tr>{th}</tr>{body}</table>{assist}
<h2>Score against latency</h2>
<img alt="score against latency per model" src="data:image/png;base64,{img}">
<h2>Settings</h2>
<table><tr><th>model</th><th>suite</th><th>at</th><th>settings</th></tr>{settings}</table>
</body></html>
"""


def write_report(path: Path, results: Sequence[SuiteResult], command: str) -> Path:
    """Write the HTML report and its PNG beside it (same name, .png); returns the PNG's path."""
    png = plot_png(results)
    png_path = path.with_suffix(".png")
    png_path.write_bytes(png)
    path.write_text(html_report(results, png, command), encoding="utf-8")
    return png_path
