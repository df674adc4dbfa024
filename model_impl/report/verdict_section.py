"""The decision, per machine and backend: renders what :mod:`model_impl.decide` returns for each
verdict run (``results/verdict-*.json``), and for a machine without one, for its committed
half-precision matrix files (each decided within its own run, labelled as such)."""

from __future__ import annotations

from .. import decide, env

BATCH_COLUMNS = (1, 2, 4, 16)


def _ratio(row: dict | None) -> str:
    if row is None:
        return "—"
    if row["ratio"] is None:
        return "no int4 qualifies" if row["best_dense"] else "—"
    text = f"**{row['ratio']:.2f}x**"
    return text if row["ratio"] >= 1 else text + " (loses)"


def table_rows(runs: list[dict]) -> list[dict]:
    """One row per (machine, backend): the decided batches, the prefill, the best form at batch
    1, memory saved, the roofline's copy and the file(s). Verdict runs replace the matrix
    files of the same machine; several matrix files of one machine give, per batch, the best
    ratio any one of them measured (each within its own run), naming its file."""
    chosen = decide.deciding_runs(runs)
    others = {}  # machine -> the other verdict runs' batch-1 ratios, so disagreement shows
    for run in runs:
        if run.get("kind") == "verdict" and run is not chosen.get(decide.machine(run)):
            for backend, d in decide.decide(run).items():
                one = next((b for b in d["batches"] if b["batch"] == 1), None)
                if one is not None:
                    others.setdefault((decide.machine(run), backend), []).append((run["file"], one["ratio"]))
    rows = {}
    for run in runs:
        machine = decide.machine(run)
        is_verdict = run.get("kind") == "verdict"
        if (is_verdict and run is not chosen.get(machine)) or (not is_verdict and machine in chosen):
            continue
        for backend, d in decide.decide(run).items():
            key = (machine, backend)
            row = rows.setdefault(
                key,
                {"machine": machine, "backend": backend, "batches": {}, "prefill": None, "files": [],
                 "method": "verdict" if is_verdict else "matrix", "dates": [], "bandwidth": None,
                 "best_form": None, "weight_bytes_saved": None, "what_stops": None,
                 "other_runs": others.get((machine, backend), [])},
            )  # fmt: skip
            used = False
            for b in d["batches"]:
                old = row["batches"].get(b["batch"])
                if old is None or (b["ratio"] or 0) > (old["ratio"] or 0):
                    row["batches"][b["batch"]] = {**b, "file": run["file"]}
                    used = True
                    if b["batch"] == 1:
                        row["best_form"] = (b["best_int4"] or {}).get("form")
                        row["weight_bytes_saved"] = b["weight_bytes_saved"]
                        row["what_stops"] = b["what_stops"]
            p = d["prefill"]
            if p["ratio"] is not None and (row["prefill"] is None or p["ratio"] > row["prefill"]["ratio"]):
                row["prefill"] = {**p, "file": run["file"]}
                used = True
            if d["bandwidth"] and (
                row["bandwidth"] is None or d["bandwidth"]["bytes_per_s"] > row["bandwidth"]["bytes_per_s"]
            ):
                row["bandwidth"] = d["bandwidth"]
            if used:
                row["files"].append(run["file"])
                row["dates"].append(run["environment"]["date"][:10])
    return list(rows.values())


def render_table(rows: list[dict]) -> list[str]:
    lines = [
        "| machine | backend | int4 / best bf16, batch 1 | 2 | 4 | 16 | 64-token prefill | best int4 form (batch 1) "
        "| weights saved | how measured | file |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        names = list(dict.fromkeys(r["files"]))

        def mark(cell: dict | None, text: str, names=names) -> str:  # a cell's file, where several
            return text if cell is None or len(names) < 2 else f"{text} [{names.index(cell['file']) + 1}]"

        cells = [mark(r["batches"].get(b), _ratio(r["batches"].get(b))) for b in BATCH_COLUMNS]
        p = r["prefill"]
        prefill = mark(p, f"{p['ratio']:.2f}x") if p else "—"
        saved = f"{r['weight_bytes_saved'] / 2**30:.2f} GiB" if r["weight_bytes_saved"] else "—"
        how = (
            "`verdict` (padded bf16 batches, same run)"
            if r["method"] == "verdict"
            else "matrix files (bf16 at one row; no padded batches)"
        )
        files = ", ".join(f"[{i}] `{f}`" if len(names) > 1 else f"`{f}`" for i, f in enumerate(names, 1))
        lines.append(
            f"| {r['machine']} | {r['backend']} | {' | '.join(cells)} | {prefill} | {r['best_form'] or '—'} | {saved} "
            f"| {how}, {max(r['dates']) if r['dates'] else ''} | {files} |"
        )
    return lines


def _ms(s) -> str:
    return "—" if not s else f"{s * 1e3:.3f}"


def render_run(run: dict) -> list[str]:
    """One verdict run in full: per backend the bandwidths, each batch's references and what
    stops int4, the forms that do not qualify and why, the profile's top kernels."""
    e = run["environment"]
    scope = "quick run (batch 1)" if run.get("quick") else "full run"
    lines = [
        f"### {decide.machine(run)}: `{run['file']}` ({env.describe(e)}, {e['date'][:10]})",
        "",
        f"Shapes {run.get('shapes')}, {run.get('dtype')} compute, {run.get('steps')} decode steps per timed loop, "
        f"parity on {run.get('parity_model')} (bound {run.get('parity_atol')}); {scope}.",
    ]
    for backend, d in decide.decide(run).items():
        lines += ["", f"**{backend}**", ""]
        for c in [r for r in run["records"] if r["kind"] == "bandwidth" and r["backend"] == backend]:
            rate = c.get("bytes_per_s")
            lines.append(
                f"- copy: {c['name']}: {rate / 1e12:.2f} TB/s" if rate else f"- copy: {c['name']}: {c.get('skipped')}"
            )
        if d["bandwidth"]:
            lines.append(f"- the roofline uses: {d['bandwidth']['name']}")
        lines += [
            "",
            "| batch | best bf16 (rows) | ms | best qualifying int4 (rows) | ms | ratio | roofline int4 / bf16 "
            "| what stops it |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for b in d["batches"]:
            dn, i4 = b["best_dense"] or {}, b["best_int4"] or {}
            roof = (
                f"{b['roofline_int4']:.0%} / {b['roofline_dense']:.0%}"
                if b["roofline_int4"] is not None and b["roofline_dense"] is not None
                else "—"
            )
            lines.append(
                f"| {b['batch']} | {dn.get('form', '—')} ({dn.get('rows', '—')}) | {_ms(dn.get('seconds'))} | "
                f"{i4.get('form', '—')} ({i4.get('rows', '—')}) | {_ms(i4.get('seconds'))} | {_ratio(b)} | {roof} | "
                f"{b['what_stops']} |"
            )
        g = d["generate"]
        if g:
            parts = [
                f"{of} {g[of]['form']} {_ms(g[of]['seconds'])} ms per token"
                + (f" ({g['roofline_' + of]:.0%} of its floor)" if g["roofline_" + of] is not None else "")
                for of in ("dense", "int4")
                if g[of]
            ]
            ratio = f": {g['ratio']:.2f}x" if g["ratio"] else ""
            lines.append(f"\nGenerate path (on-device loop, one sequence): {'; '.join(parts)}{ratio}")
        p = d["prefill"]
        if p["ratio"] is not None:
            lines.append(
                f"\n{p['tokens']}-token prefill: bf16 {p['best_dense']['form']} {_ms(p['best_dense']['seconds'])} ms, "
                f"int4 {p['best_int4']['form']} {_ms(p['best_int4']['seconds'])} ms: {p['ratio']:.2f}x"
            )
        lines += routes_lines(d["routes"])
        if d["anchors"]:
            lines += ["", "Other routes, same run (never qualifying: another format or a custom kernel):", "",
                      "| batch | route | form | ms | ratio | against |", "|---|---|---|---|---|---|"]  # fmt: skip
            for a in d["anchors"]:
                ratio = f"{a['ratio']:.2f}x" if a["ratio"] else "—"
                lines.append(
                    f"| {a['batch']} | {a['route']} | {a['name']} | {_ms(a['seconds'])} | {ratio} | {a['versus']} |"
                )
        if d["not_qualifying"]:
            lines += [
                "",
                "Forms that do not qualify: "
                + "; ".join(f"{k}: {', '.join(v)}" for k, v in d["not_qualifying"].items()),
            ]
        for prof in [
            r for r in run["records"] if r["kind"] == "profile" and r["backend"] == backend and r.get("kernels")
        ]:
            top = ", ".join(
                f"{k['name']} {k['seconds'] * 1e6:.1f} us"
                + (f" ({k['bytes_per_s'] / 1e12:.2f} TB/s)" if k.get("bytes_per_s") else "")
                for k in prof["kernels"][:5]
            )
            lines.append(f"\nProfile, {prof['of']} ({prof['form']}), per step: {top}")
    return lines


def routes_lines(routes: list[dict]) -> list[str]:
    """The routes side by side per batch (:func:`decide.routes`): ms and the ratio to the best
    bf16 step of the batch; tinygemm's ratio against torch's bf16 on the step's linears alone."""
    if not any(r["custom"] or r["tinygemm"] for r in routes):
        return []

    def cell(x: dict | None, name: str | None = None) -> str:
        if not x:
            return "—"
        ratio = f" = **{x['ratio']:.2f}x**" if x.get("ratio") else ""
        name = name or x.get("form")
        return (f"{name}: " if name else "") + f"{_ms(x['seconds'])} ms{ratio}"

    lines = [
        "",
        "Routes side by side, same run (ratios against the best bf16 step of the batch; tinygemm against "
        "torch's cuBLAS bf16 on the step's linears alone; the floor: the int4 step's bytes at the roofline's copy):",
        "",
        "| batch | best bf16 | in-graph int4 (qualifying) | our kernel (custom_call) | tinygemm (torch) | int4 floor |",
        "|---|---|---|---|---|---|",
    ]
    for r in routes:  # the floor unnamed: it is the int4 step's bytes, not a form
        tiny = r["tinygemm"]
        lines.append(
            f"| {r['batch']} | {cell(r['best_dense'])} | {cell(r['in_graph'])} | {cell(r['custom'])} | "
            f"{cell(tiny, tiny and tiny['name'])} | {cell(r['floor'])} |"
        )
    if any(r["custom"] for r in routes):
        lines.append(
            "\nOur kernel under tensor parallelism: GSPMD cannot partition it (a custom_call), so it runs in "
            "`shard_map` (column-parallel rows; row-parallel columns and a float32 all-reduce), weights staying "
            "local (`tests/parallel/test_tensor_parallel.py`, the CPU's host devices)."
        )
    return lines


def load(results_dir=None) -> list[dict]:
    """The current verdict runs, and each current half-precision matrix file as a run
    (:func:`decide.from_matrix`): :func:`table_rows` uses a matrix file only for a machine
    that has no verdict run."""
    from . import results, vs_bf16_section

    d = results.RESULTS_DIR if results_dir is None else results_dir
    matrices = [{**decide.from_matrix(r), "file": r["file"]} for r in vs_bf16_section.load(d)]
    return results.load(d, "verdict-*.json") + decide.share_checks(matrices)


def load_upstream(results_dir=None) -> list[dict]:
    """The performance reproducers' figures per machine from the current ``reproducers-*.json``."""
    from . import results

    return decide.upstream(
        results.load(results.RESULTS_DIR if results_dir is None else results_dir, "reproducers-*.json")
    )


def _crossover_text(row: dict) -> str:
    measured = sorted(row["batches"])
    lost = [b for b in measured if (row["batches"][b]["ratio"] or 0) < 1]
    if len(measured) == 1:
        return f"int4 {'loses' if lost else 'wins'} at the one batch measured ({measured[0]})"
    if not lost:
        return f"int4 wins at every batch measured ({', '.join(map(str, measured))})"
    if lost[0] == measured[0]:
        return "int4 loses at every batch measured" if len(lost) == len(measured) else f"int4 loses at batch {lost[0]}"
    return f"int4 wins up to batch {max(b for b in measured if b < lost[0])} and loses from batch {lost[0]}"


def summary_lines(rows: list[dict]) -> list[str]:
    """What is true on which machine, one line per (machine, backend), each naming its file."""
    lines = []
    for r in rows:
        one = r["batches"].get(1)
        files = ", ".join(f"`{f}`" for f in dict.fromkeys(r["files"]))
        if one is None:
            continue
        fastest, dense = one.get("fastest_int4"), one["best_dense"]
        if one["ratio"] is None:
            text = "no int4 form qualifies: " + one["what_stops"].removeprefix("no form qualifies; ")
            if fastest and dense:
                text += f"; it runs at {dense['seconds'] / fastest['seconds']:.2f}x the best bf16 step"
        else:
            text = (
                f"the best qualifying int4 form, {r['best_form']}, runs the decode step at **{one['ratio']:.2f}x** "
                f"the best bf16 form ({dense['form']}, {dense['rows']} row{'s' if dense['rows'] > 1 else ''}); "
                f"{_crossover_text(r)}"
            )
            if one["ratio"] < 1:
                text += f"; at batch 1, {one['what_stops']}"
        if r["other_runs"]:
            text += "; other runs of this machine at batch 1: " + ", ".join(
                f"{'no int4 qualifies' if q is None else f'{q:.2f}x'} (`{f}`)" for f, q in r["other_runs"]
            )
        lines.append(f"- **{r['machine']}, {r['backend']}**: {text}. [{files}]")
    return lines


def upstream_lines(upstream: list[dict]) -> list[str]:
    """What stops int4, as the performance reproducers measured it (:func:`decide.upstream`)."""
    if not upstream:
        return []
    lines = ["", "What stops it, in reproducers sent upstream (`reproducers/`; each times one linear):", ""]
    return lines + [f"- **{u['machine']}**: {u['text']} (`reproducers/{u['case']}`, `{u['file']}`)." for u in upstream]


def render(runs: list[dict], upstream: list[dict] = ()) -> list[str]:
    rows = table_rows(runs)
    if not rows:
        return ["", "## The decision", "", "No verdict or half-precision matrix results committed."]
    out = ["", "## The decision: int4 against the best bf16, per machine", ""] + render_table(rows)
    out += ["", *summary_lines(rows), *upstream_lines(upstream)]
    for run in runs:
        if run.get("kind") == "verdict":
            out += ["", *render_run(run)]
    return out


README_START = "<!-- verdict table: generated by `python -m model_impl decision --readme`; do not edit -->"
README_END = "<!-- end of verdict table -->"


def readme_block(runs: list[dict], upstream: list[dict] = ()) -> str:
    rows = table_rows(runs)
    return "\n".join(
        [README_START, *render_table(rows), "", *summary_lines(rows), *upstream_lines(upstream), README_END]
    )


def charts(runs: list[dict], out_dir) -> list[str]:
    """Two pictures from the verdict runs (one panel per machine and backend, machine and file
    in each title): int4 against the best bf16 by batch, with 1.0 marked; and the batch-1 step
    of the best bf16 and best int4 forms against their byte floors (least bytes / the run's
    best copy). Returns the markdown lines that show them."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = list(decide.deciding_runs(runs).values())
    panels = [(run, backend, d) for run in chosen for backend, d in decide.decide(run).items()]
    panels = [p for p in panels if any(b["best_dense"] for b in p[2]["batches"])]
    if not panels:
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (run, backend, d) in zip(axes[0], panels):
        rows = [b for b in d["batches"] if b["ratio"] is not None]
        x = [str(b["batch"]) for b in d["batches"]]
        ax.axhline(1.0, color="black", lw=1, ls="--", label="bf16 (the best form serving the batch)")
        if rows:
            ax.plot([str(b["batch"]) for b in rows], [b["ratio"] for b in rows], "o-", color="tab:red",
                    label="best qualifying int4")  # fmt: skip
            for b in rows:
                ax.annotate(f"{b['ratio']:.2f}x", (str(b["batch"]), b["ratio"]), textcoords="offset points",
                            xytext=(0, 7 if b["ratio"] >= 1 else -13), ha="center", fontsize=8)  # fmt: skip
        else:
            ax.text(0.5, 0.5, "no int4 form qualifies", transform=ax.transAxes, ha="center")
        fastest = [b for b in d["batches"] if b["fastest_int4"] and b["best_dense"]]
        others = [(str(b["batch"]), b["best_dense"]["seconds"] / b["fastest_int4"]["seconds"]) for b in fastest]
        others = [(x_, r) for (x_, r), b in zip(others, fastest) if b["fastest_int4"] != b["best_int4"]]
        if others:
            ax.plot(*zip(*others), "o", mfc="none", color="tab:gray", label="fastest int4 that does not qualify")
        ax.set_xticks(range(len(x)), x)
        ax.set_ylim(0, max([1.3] + [b["ratio"] * 1.2 for b in rows] + [r * 1.2 for _, r in others]))
        ax.set_xlabel("decode batch (sequences)")
        ax.set_ylabel("bf16 step / int4 step")
        ax.set_title(f"{decide.machine(run)}, {backend}\n{run['file']}", fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(out / "verdict-ratio.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (run, backend, d) in zip(axes[0], panels):
        one = next((b for b in d["batches"] if b["batch"] == 1), None)
        g = d["generate"]
        path = "generate path (on-device loop)" if g else "device-bound step (in-graph loop; no generate run)"
        bars = []
        for label, of in (("best bf16", "dense"), ("best int4", "int4")):
            step = (g or {}).get(of) or (one or {}).get(f"best_{of}")
            if step:
                frac = g[f"roofline_{of}"] if g and g.get(of) else one[f"roofline_{of}"]
                bars.append((f"{label}\n{step['form']}", step["seconds"] * 1e3, frac))
        xs = range(len(bars))
        ax.bar(xs, [b[1] for b in bars], color=["tab:green", "tab:red"][: len(bars)])
        for i, (_, ms, frac) in enumerate(bars):
            if frac:
                ax.hlines(ms * frac, i - 0.4, i + 0.4, color="black", label="byte floor" if i == 0 else None)
                ax.annotate(f"{frac:.0%} of floor", (i, ms), textcoords="offset points", xytext=(0, 4), ha="center",
                            fontsize=8)  # fmt: skip
        ax.set_xticks(list(xs), [b[0] for b in bars], fontsize=7)
        ax.set_ylabel(f"ms per token, one sequence:\n{path}", fontsize=8)
        bw = d["bandwidth"]
        ax.set_title(
            f"{decide.machine(run)}, {backend}\n{run['file']}"
            + (f"\nfloor = least bytes / {bw['bytes_per_s'] / 1e12:.2f} TB/s ({bw['name']})" if bw else ""),
            fontsize=8,
        )
        if any(b[2] for b in bars):
            ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "verdict-roofline.png", dpi=110)
    plt.close(fig)
    return [
        "![int4 against the best bf16 by batch](verdict-ratio.png)",
        "",
        "![the batch-1 step against its byte floor](verdict-roofline.png)",
    ]
