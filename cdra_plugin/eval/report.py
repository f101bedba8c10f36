"""``cdra eval report``: Table 1 and Figure 4 of the paper for several runs side by side.

Reads the judgments of each run (``cdra eval judge`` outputs), computes the metrics (``cdra_plugin.eval.metrics``)
and writes, all or nothing (``cdra_plugin.io.writer.AtomicFiles``), into one directory:

- ``report.json``: ``{"runs": {name: {metric: value, "n", "excluded", "ci95", "by_topic", "protocol"}},
  "paired": {...}, "intervals": {...}, "comparable": bool, "differences": {run: [what differs]}}``;
- ``report.md``: what each run measured (one protocol line per run: judge, prompts, judge input, generation
  settings, plugin version), Table 1's six columns and the four error rates with 95% intervals, paired differences
  (not adjusted for multiple comparisons), the responses each metric excluded and the judge's failures by check and
  kind, per-topic values;
- ``report.csv``: one line per (run, metric): value, ci_lo, ci_hi, n, excluded;
- ``radar.png``: Figure 4, six axes (Preference following (Acc_PF), ..., Innovative expansion (m_ie); further out is
  better), every run on one chart with its number of responses;
- ``errors.png``: the four PrefEval error rates of every run (a zero bar is labelled 0).

Runs judged differently (another judge model or settings, another judge input, another prompt for a check both
asked: ``cdra_plugin.eval.protocol``) are not comparable: the report is refused, naming what differs, unless
``allow_mixed``; then every run that differs from the first is marked in the tables and the differences listed.

    report({"zero-shot": "out/eval/zero-shot.judged.jsonl", "policy": "out/eval/policy.judged.jsonl"}, "out/report")
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path

from cdra_plugin.eval.metrics import INTERVAL, LOWER_IS_BETTER, METRICS, compare
from cdra_plugin.eval.protocol import describe, differences, run_protocol
from cdra_plugin.io.jsonl import read_rows
from cdra_plugin.io.writer import AtomicFiles

LABELS = {
    "acc_pf": "Acc_PF",
    "acc_da": "Acc_DA",
    "acc_mis": "Acc_Mis",
    "m_th": "m_th",
    "m_dm": "m_dm",
    "m_ie": "m_ie",
    "e_puv": "e_puv",
    "e_hp": "e_hp",
    "e_ir": "e_ir",
    "e_ur": "e_ur",
}
TABLE_1 = ("acc_pf", "acc_da", "acc_mis", "m_th", "m_dm", "m_ie")
ERRORS = ("e_puv", "e_hp", "e_ir", "e_ur")
ERROR_NAMES = {
    "e_puv": "preference-unaware violation",
    "e_hp": "hallucination of preference",
    "e_ir": "inconsistent response",
    "e_ur": "unhelpful response",
}
# Fig. 4's axes, spelled out (App. B's names), in TABLE_1's order
AXES = ("Preference following\n(Acc_PF)", "Deep alignment\n(Acc_DA)", "No misleading risk\n(100 − Acc_Mis)",
        "Thoughtfulness\n(m_th)", "Deep mining\n(m_dm)", "Innovative expansion\n(m_ie)")  # fmt: skip
MARK = "†"  # a run judged otherwise than the first (--allow-mixed)


def read_judgments(path: Path, run: str) -> list[dict]:
    """A run's judgment rows, checked for what the metrics read; ``ValueError`` naming file:line otherwise."""
    rows, seen = [], {}
    for n, row in read_rows(path, f"--runs {run}="):
        verdicts = row.get("verdicts")
        if "id" not in row or not isinstance(verdicts, dict):
            raise ValueError(f"{path}:{n}: no 'id'/'verdicts'; --runs takes `cdra eval judge` output")
        bad = [c for c, v in verdicts.items() if v is not None and not isinstance(v, bool)]
        if bad:
            raise ValueError(f"{path}:{n}: verdicts {bad} must be true, false or null")
        key = (str(row["id"]), row.get("mode"), row.get("model"), row.get("sample"))
        if key in seen:
            raise ValueError(f"{path}:{n}: the same response as line {seen[key]} (id, mode, model, sample {key})")
        seen[key] = n
        rows.append(row)
    if not rows:
        raise ValueError(f"--runs {run}={path}: no judgments in the file")
    return rows


def _cell(value, interval=None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f}" + (f" [{interval[0]:.1f}, {interval[1]:.1f}]" if interval else "")


def _arrow(metric: str) -> str:
    return "↓" if metric in LOWER_IS_BETTER else "↑"


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(x) + " |" for x in lines
    ]


def _shown(report: dict, name: str) -> str:
    """A run's name as the tables show it: marked when it was judged otherwise than the first run."""
    return f"{name} {MARK}" if name in report["differences"] else name


def _pair_shown(report: dict, pair: str) -> str:
    marked = any(pair.startswith(f"{name}-") or pair.endswith(f"-{name}") for name in report["differences"])
    return f"{pair} {MARK}" if marked else pair


def _protocol_lines(report: dict) -> list[str]:
    out = ["## Protocol", ""]
    out += [f"- **{name}**: {describe(r['protocol'])}" for name, r in report["runs"].items()]
    mixed = [f"{name} ({', '.join(r['protocol']['mixed'])})" for name, r in report["runs"].items()
             if r["protocol"]["mixed"]]  # fmt: skip
    if mixed:
        out.append(f"- rows of one run judged or generated in more than one way: {'; '.join(mixed)}")
    for name, found in report["differences"].items():
        out.append(f"- {MARK} {name} was judged otherwise than {next(iter(report['runs']))}: {'; '.join(found)}")
    out += ["", f"Intervals: {INTERVAL['rates']}. Paired differences: {INTERVAL['paired']}."]
    return out


def markdown(report: dict, failures: dict[str, Counter]) -> str:
    """report.md: the tables a reader compares runs by."""
    runs = report["runs"]
    out = [
        "# Evaluation report",
        "",
        "Percent of judged responses, 95% interval in brackets (over prompts).",
        "",
        *_protocol_lines(report),
        "",
        "## Table 1",
        "",
    ]
    header = ["run", "responses"] + [f"{LABELS[m]} {_arrow(m)}" for m in TABLE_1]
    out += _table(
        header,
        [
            [_shown(report, name), str(r["n"]["acc_pf"] + r["excluded"]["acc_pf"])]
            + [_cell(r[m], r["ci95"][m]) for m in TABLE_1]
            for name, r in runs.items()
        ],
    )
    out += ["", "## PrefEval error types", ""]
    header = ["run"] + [f"{LABELS[m]} {_arrow(m)} ({ERROR_NAMES[m]})" for m in ERRORS]
    out += _table(
        header, [[_shown(report, name)] + [_cell(r[m], r["ci95"][m]) for m in ERRORS] for name, r in runs.items()]
    )
    if report["paired"]:
        out += [
            "",
            "## Paired differences (percentage points, on the prompt ids both runs share)",
            "",
            f"Each interval holds 95% on its own: not adjusted for multiple comparisons ({len(METRICS)} metrics x "
            f"{len(report['paired'])} pair(s)).",
            "",
        ]
        header = ["later - earlier"] + [f"{LABELS[m]} {_arrow(m)}" for m in METRICS]
        out += _table(
            header,
            [
                [_pair_shown(report, pair)] + [_cell(d[m]["diff"], d[m]["ci95"]) for m in METRICS]
                for pair, d in report["paired"].items()
            ],
        )
    out += ["", "## Excluded responses (a verdict the metric needs is null) and judge failures", ""]
    header = ["run"] + [LABELS[m] for m in METRICS] + ["null verdicts by check and kind"]
    lines = []
    for name, r in runs.items():
        kinds = ", ".join(f"{check} {kind}: {k}" for (check, kind), k in sorted(failures[name].items())) or "none"
        lines.append([name] + [str(r["excluded"][m]) for m in METRICS] + [kinds])
    out += _table(header, lines)
    out += ["", "## By topic", ""]
    header = ["topic", "run"] + [f"{LABELS[m]} {_arrow(m)}" for m in TABLE_1]
    topics = sorted({t for r in runs.values() for t in r["by_topic"]})
    out += _table(
        header,
        [
            [topic, name] + [_cell(r["by_topic"][topic][m]) for m in TABLE_1]
            for topic in topics
            for name, r in runs.items()
            if topic in r["by_topic"]
        ],
    )
    return "\n".join(out) + "\n"


def csv_text(report: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["run", "metric", "value", "ci_lo", "ci_hi", "n", "excluded"])
    for name, r in report["runs"].items():
        for m in METRICS:
            lo, hi = r["ci95"][m] or ("", "")
            writer.writerow([name, m, "" if r[m] is None else r[m], lo, hi, r["n"][m], r["excluded"][m]])
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    return plt


def radar_figure(report: dict):
    """Figure 4: the six dimensions of every run on one chart, further out is better, n per run in the legend."""
    import numpy as np

    plt = _pyplot()
    angles = np.linspace(0, 2 * np.pi, len(AXES), endpoint=False)
    fig = plt.figure(figsize=(6.5, 6.0), dpi=90)
    ax = fig.add_subplot(projection="polar")
    ax.set_theta_offset(np.pi / 2)  # Acc_PF at the top, then clockwise
    ax.set_theta_direction(-1)
    for name, r in report["runs"].items():
        values = [r[m] if m != "acc_mis" or r[m] is None else 100 - r[m] for m in TABLE_1]
        values = [np.nan if v is None else v for v in values]  # a metric not judged leaves a gap, never a 0
        closed = np.append(values, values[0])
        label = f"{_shown(report, name)} (n={r['n']['acc_pf'] + r['excluded']['acc_pf']})"
        ax.plot(np.append(angles, angles[0]), closed, marker="o", linewidth=1.5, label=label)
        if np.isfinite(closed).all():
            ax.fill(np.append(angles, angles[0]), closed, alpha=0.08)
    ax.set_xticks(angles, AXES, fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_yticks([20, 40, 60, 80, 100])
    ax.set_rlabel_position(30)  # between the first two axes, off their lines
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title("Six dimensions (%), further out is better", pad=18)
    ax.legend(loc="upper right", bbox_to_anchor=(1.42, 1.14), fontsize=8, title="run (responses)", title_fontsize=8)
    return fig


def errors_figure(report: dict):
    """The four PrefEval error rates of every run; a zero bar is labelled 0, so a run without errors shows."""
    import numpy as np

    plt = _pyplot()
    runs = report["runs"]
    fig, ax = plt.subplots(figsize=(7.5, 3.8), dpi=90)
    width = 0.8 / max(1, len(runs))
    x = np.arange(len(ERRORS))
    for k, (name, r) in enumerate(runs.items()):
        values = [np.nan if r[m] is None else r[m] for m in ERRORS]
        bars = ax.bar(x + (k - (len(runs) - 1) / 2) * width, values, width, label=_shown(report, name))
        ax.bar_label(bars, ["0" if v == 0 else "" for v in values], fontsize=7, padding=1)
    ax.set_xticks(x, [f"{LABELS[m]}\n" + ERROR_NAMES[m].replace(" ", "\n", 1) for m in ERRORS], fontsize=8)
    ax.set_ylabel("% of responses (lower is better)")
    ax.set_title("PrefEval error types")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


def _differences(result: dict, allow_mixed: bool) -> dict[str, list[str]]:
    """What sets each run's judging apart from the first run's (``ValueError`` unless ``allow_mixed``)."""
    first, *others = result["runs"]
    found = {}
    for name in others:
        differ = differences(result["runs"][first]["protocol"], result["runs"][name]["protocol"])
        if differ:
            found[name] = differ
    inside = {name: r["protocol"]["mixed"] for name, r in result["runs"].items()
              if set(r["protocol"]["mixed"]) - {"generation"}}  # fmt: skip
    if (found or inside) and not allow_mixed:
        lines = [f"{first} vs {name}: {'; '.join(d)}" for name, d in found.items()]
        lines += [f"{name} alone: rows judged in more than one way ({', '.join(m)})" for name, m in inside.items()]
        raise ValueError(
            "runs judged differently are not comparable in one table (" + " | ".join(lines) + "); judge them alike, "
            "or pass --allow-mixed to report them anyway (the tables then mark them)"
        )
    return {**found, **{name: [f"rows judged in more than one way ({', '.join(m)})"] for name, m in inside.items()
                        if name not in found}}  # fmt: skip


def report(runs: dict[str, str | Path], output: str | Path, *, allow_mixed: bool = False) -> dict:
    """Write report.json/.md/.csv, radar.png and errors.png for ``runs`` (name -> judgments file) into ``output``;
    returns the report (the content of report.json). Runs judged differently are refused unless ``allow_mixed``."""
    if not runs:
        raise ValueError("--runs: at least one NAME=JUDGMENTS is needed")
    rows = {name: read_judgments(Path(path), name) for name, path in runs.items()}
    result = compare(rows)
    for name, run_rows in rows.items():
        result["runs"][name]["protocol"] = run_protocol(run_rows, INTERVAL)
    result["intervals"] = INTERVAL
    result["differences"] = _differences(result, allow_mixed)
    result["comparable"] = not result["differences"]
    failures = {
        name: Counter((c, k) for row in rs for c, k in (row.get("failures") or {}).items())
        for name, rs in rows.items()
    }
    figures = {"radar.png": _png(radar_figure(result)), "errors.png": _png(errors_figure(result))}
    with AtomicFiles(output) as files:
        for name, data in figures.items():
            with files.open(name, "wb") as stream:
                stream.write(data)
        with files.open("report.csv") as stream:
            stream.write(csv_text(result))
        with files.open("report.md") as stream:
            stream.write(markdown(result, failures))
        files.write_json("report.json", result)  # last: its presence marks a complete set
    return result
