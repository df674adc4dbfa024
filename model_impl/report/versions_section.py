"""What changed between compiler versions (``results/versions-cpu.json``, written by
``python -m model_impl versions``): per neighbouring pair of version sets, every compiler
observation whose answer differs and every test whose outcome differs
(:func:`model_impl.lab.versions.changes` decides), and how many stayed the same."""

from __future__ import annotations

from ..lab import versions


def load(results_dir=None) -> dict | None:
    from . import results

    found = results.load(results.RESULTS_DIR if results_dir is None else results_dir, "versions-cpu.json")
    return found[-1] if found else None


def _cell(kind: str, o) -> str:
    if o is None:
        return "absent"
    if kind == "observation":
        return f"`{o}`"
    return o["outcome"] + (f": {o['message']}" if o.get("message") else "")


def render(run: dict | None) -> list[str]:
    if run is None:
        return []
    out = ["", "## What changed between compiler versions", ""]
    sets = ", ".join(
        f"{s['name']} ({sum(t['outcome'] == 'passed' for t in s['tests'].values())}/{len(s['tests'])} passed)"
        for s in run["sets"]
    )
    out += [f"The compiler-facing tests ({', '.join(run['suite'])}) per version set on this CPU machine "
            f"(`{run['file']}`, {run['environment']['date'][:10]}): {sets}.", ""]  # fmt: skip
    for pair in versions.changes(run):
        head = f"**{pair['from']} -> {pair['to']}**: {len(pair['changed'])} changed, {pair['same']} the same."
        out += [head, ""]
        if pair["changed"]:
            out += ["| what | before | after |", "| --- | --- | --- |"]
            out += [
                f"| {c['kind']}: `{c['what']}` | {_cell(c['kind'], c['from'])} | {_cell(c['kind'], c['to'])} |"
                for c in pair["changed"]
            ]
            out.append("")
    return out
