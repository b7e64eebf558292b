"""A sweep's comparison: results.csv (one row per point and decoding setting), results.md (a
row key x column key table of the protocol CE and the best sample score, as the paper's Table 2
lays out span length x restricted context, then every point) and two plots (CE against mask rate
per point; sample score against decoding steps)."""
from __future__ import annotations

import csv
import io
import itertools
import os
from typing import Any, Dict, List

import numpy as np

from magnet_jax.atomic_files import replace_atomically, write_text_atomically


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "-".join(map(str, v))
    return str(v)


def csv_rows(results: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    rows = []
    for r in results:
        p = r["protocol"]
        base = {"point": r["name"], **{k: _fmt(v) for k, v in r["values"].items()}, "steps": r["steps"],
                "tokens": r["tokens"], "train_seconds": round(r["train_seconds"], 1),
                "ce_cosine": round(p["ce_cosine"], 5), "acc_cosine": round(p["acc_cosine"], 5)}
        base.update({f"ce_rate_{rate:.1f}": round(float(np.mean(col)), 5)
                     for rate, col in zip(p["mask_rates"], np.asarray(p["ce"]).T)})
        base.update({f"ce_cosine_stage_{k}": round(v, 5) for k, v in enumerate(p["ce_cosine_per_stage"])})
        for d in r["decoding"] or [None]:
            row = dict(base)
            if d is not None:
                row.update({f"decode.{k}": _fmt(v) for k, v in d["setting"].items()})
                row.update({"decoding_steps_total": d["decoding_steps_total"],
                            "agreement_mean": round(d["agreement_mean"], 4),
                            **{f"agreement_stage_{k}": round(a, 4) for k, a in enumerate(d["agreement"])},
                            "sample_seconds": round(d["seconds"], 2)})
            rows.append(row)
    return rows


def _csv_text(rows: List[Dict[str, Any]]) -> str:
    fields: List[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _best_agreement(r: Dict[str, Any]):
    return max((d["agreement_mean"] for d in r["decoding"]), default=None)


def markdown(sweep, results: List[Dict[str, Any]]) -> str:
    keys = list(sweep.grid)
    row_key, col_key = sweep.table if sweep.table else (keys + keys)[:2]
    rest = [k for k in keys if k not in (row_key, col_key)]
    p0 = results[0]["protocol"]
    lines = [f"Protocol `{p0['protocol']}`: CE (nats) on the masked frames of {p0['examples']} held-out examples, "
             f"spans of {p0['span_len']}, averaged over the cosine schedule's mask rates and the stages (lower is "
             "better). In brackets: the best mean rule-following score of the samples over the decoding settings "
             "(synthetic data; higher is better).", ""]
    by_values = {tuple(_fmt(r["values"][k]) for k in keys): r for r in results}
    for fixed in itertools.product(*[list(dict.fromkeys(_fmt(v) for v in sweep.grid[k])) for k in rest]):
        if rest:
            lines.append("**" + ", ".join(f"{k} = {v}" for k, v in zip(rest, fixed)) + "**")
            lines.append("")
        cols = list(dict.fromkeys(_fmt(v) for v in sweep.grid[col_key]))
        lines.append(f"| {row_key} \\ {col_key} | " + " | ".join(cols) + " |")
        lines.append("| --- " * (len(cols) + 1) + "|")
        for rv in dict.fromkeys(_fmt(v) for v in sweep.grid[row_key]):
            cells = []
            for cv in cols:
                values = {row_key: rv, col_key: cv, **dict(zip(rest, fixed))}
                r = by_values.get(tuple(values[k] for k in keys))
                if r is None:
                    cells.append("(not run yet)")
                    continue
                best = _best_agreement(r)
                cells.append(f"{r['protocol']['ce_cosine']:.4f}" + (f" ({best:.3f})" if best is not None else ""))
            lines.append(f"| {rv} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Every point:", "", "| point | steps | protocol CE | CE at rates " +
              ", ".join(f"{x:.1f}" for x in p0["mask_rates"]) + " | samples: decoding -> agreement |",
              "| --- | --- | --- | --- | --- |"]
    for r in results:
        p = r["protocol"]
        rates = ", ".join(f"{np.mean(c):.3f}" for c in np.asarray(p["ce"]).T)
        dec = "; ".join(f"{_setting(d['setting'])} -> {d['agreement_mean']:.3f}" for d in r["decoding"]) or "-"
        lines.append(f"| {r['name']} | {r['steps']} | {p['ce_cosine']:.4f} | {rates} | {dec} |")
    return "\n".join(lines) + "\n"


def _setting(s: Dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in s.items()) or "config's"


def plot(path: str, results: List[Dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for r in results:
        p = r["protocol"]
        axes[0].plot(p["mask_rates"], np.asarray(p["ce"]).mean(0), marker="o", ms=3, label=r["name"])
        best: Dict[int, float] = {}  # per decoding budget, the best over the other decoding knobs
        for d in r["decoding"]:
            steps = d["decoding_steps_total"]
            best[steps] = max(best.get(steps, -1.0), d["agreement_mean"])
        if best:
            steps = sorted(best)
            axes[1].plot(steps, [best[s] for s in steps], marker="o", ms=3, label=r["name"])
    axes[0].set(xlabel="mask rate (protocol)", ylabel="held-out CE, mean over stages (nats)",
                title="CE against mask rate, per point")
    axes[1].set(xlabel="decoding steps (all stages)", ylabel="samples following the data's rules (best setting)",
                title="sample score against decoding steps")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    replace_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def write_report(workdir: str, sweep, results: List[Dict[str, Any]]) -> None:
    """results.csv, results.md and results.png of the finished points (each file replaced whole)."""
    import jax

    if not results or jax.process_index() != 0:
        return
    for name, text in (("results.csv", _csv_text(csv_rows(results))), ("results.md", markdown(sweep, results))):
        write_text_atomically(os.path.join(workdir, name), text)
    plot(os.path.join(workdir, "results.png"), results)
