"""The decision, per machine and backend: renders what :mod:`model_impl.decide` returns for each
verdict run (``results/verdict-*.json``), and for a machine without one, for its committed
half-precision matrix files (each decided within its own run, labelled as such)."""

from __future__ import annotations

from .. import decide, env

BATCH_COLUMNS = (1, 2, 4, 16)


def machine_of(run: dict) -> str:
    m = run["environment"]["machine"]
    return m.get("gpu") or f"CPU ({m.get('cpu')}, {m.get('cores')} cores)"


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
    verdict_machines = {machine_of(r) for r in runs if r.get("kind") == "verdict"}
    rows = {}
    for run in runs:
        machine = machine_of(run)
        is_verdict = run.get("kind") == "verdict"
        if not is_verdict and machine in verdict_machines:
            continue
        for backend, d in decide.decide(run).items():
            key = (machine, backend)
            row = rows.setdefault(
                key,
                {"machine": machine, "backend": backend, "batches": {}, "prefill": None, "files": [],
                 "method": "verdict" if is_verdict else "matrix", "dates": [], "bandwidth": None,
                 "best_form": None, "weight_bytes_saved": None, "what_stops": None},
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
            if d["bandwidth"] and (row["bandwidth"] is None or d["bandwidth"]["bytes_per_s"] > row["bandwidth"]["bytes_per_s"]):
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
        cells = [_ratio(r["batches"].get(b)) for b in BATCH_COLUMNS]
        p = r["prefill"]
        prefill = f"{p['ratio']:.2f}x" if p else "—"
        saved = f"{r['weight_bytes_saved'] / 2**30:.2f} GiB" if r["weight_bytes_saved"] else "—"
        how = (
            "`verdict` (padded bf16 batches, same run)"
            if r["method"] == "verdict"
            else "matrix files (bf16 at one row; no padded batches)"
        )
        files = ", ".join(f"`{f}`" for f in dict.fromkeys(r["files"]))
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
    lines = [f"### {machine_of(run)}: `{run['file']}` ({env.describe(run['environment'])}, {run['environment']['date'][:10]})", ""]
    lines.append(
        f"Shapes {run.get('shapes')}, {run.get('dtype')} compute, {run.get('steps')} decode steps per timed loop, "
        f"parity on {run.get('parity_model')} (bound {run.get('parity_atol')}); {'quick run (batch 1)' if run.get('quick') else 'full run'}."
    )
    for backend, d in decide.decide(run).items():
        lines += ["", f"**{backend}**", ""]
        for c in [r for r in run["records"] if r["kind"] == "bandwidth" and r["backend"] == backend]:
            rate = c.get("bytes_per_s")
            lines.append(
                f"- copy: {c['name']}: {rate / 1e12:.2f} TB/s" if rate else f"- copy: {c['name']}: {c.get('skipped')}"
            )
        if d["bandwidth"]:
            lines.append(f"- the roofline uses: {d['bandwidth']['name']}")
        lines += ["", "| batch | best bf16 (rows) | ms | best qualifying int4 (rows) | ms | ratio | roofline int4 / bf16 | what stops it |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
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
        p = d["prefill"]
        if p["ratio"] is not None:
            lines.append(
                f"\n{p['tokens']}-token prefill: bf16 {p['best_dense']['form']} {_ms(p['best_dense']['seconds'])} ms, "
                f"int4 {p['best_int4']['form']} {_ms(p['best_int4']['seconds'])} ms: {p['ratio']:.2f}x"
            )
        if d["not_qualifying"]:
            lines += ["", "Forms that do not qualify: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in d["not_qualifying"].items())]
        for prof in [r for r in run["records"] if r["kind"] == "profile" and r["backend"] == backend and r.get("kernels")]:
            top = ", ".join(
                f"{k['name']} {k['seconds'] * 1e6:.1f} us"
                + (f" ({k['bytes_per_s'] / 1e12:.2f} TB/s)" if k.get("bytes_per_s") else "")
                for k in prof["kernels"][:5]
            )
            lines.append(f"\nProfile, {prof['of']} ({prof['form']}), per step: {top}")
    return lines
