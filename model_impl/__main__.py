"""Command line: ``python -m model_impl generate|characterize``."""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _ints(flag: str, text: str) -> list[int]:
    """Comma-separated integers, or a ValueError naming the flag (one ``error:`` line upstream)."""
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise ValueError(f"{flag} is empty")
    return values


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def cmd_generate(args) -> int:
    import numpy as np

    from . import checkpoints as checkpoint
    from .backends import generate

    try:
        if args.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
        if args.chunk < 0:
            raise ValueError(f"--chunk must be 0 (one dispatch per step) or more, got {args.chunk}")
        if args.tp < 1:
            raise ValueError(f"--tp must be at least 1, got {args.tp}")
        if args.tp > 1 and args.backend == "xla-cpu":  # host devices, before JAX starts its CPU client
            from .llama.sharding import host_devices

            host_devices(args.tp)
        generate.require_device(args.backend)  # before anything is loaded or built
        if args.representation:
            from .llama import representations

            if args.quant != "int4":
                raise ValueError("--representation applies to --quant int4 weights")
            if args.representation == representations.PALLAS and args.backend != "xla-cuda":
                raise ValueError(
                    f"--representation {args.representation} is a Pallas (Triton) kernel: it runs on xla-cuda only "
                    f"(IREE cannot compile its custom_call; on the CPU only Pallas' interpreter runs it, for tests)"
                )
        cfg, weights = checkpoint.load(args.model, args.quant, args.dtype)
        if args.representation:
            weights = representations.convert(weights, args.representation)
        tokenizer = None
        if args.token_ids is not None:
            prompt = _ints("--token-ids", args.token_ids)
        else:
            tokenizer = checkpoint.load_tokenizer(args.model)
            prompt = tokenizer(args.prompt).input_ids
        runner = generate.make_runner(cfg, weights, args.backend, cuda_target=args.iree_cuda_target, tp=args.tp)
        result = generate.generate(
            runner,
            prompt,
            args.max_new_tokens,
            stop_at_eos=not args.ignore_eos,
            keep_logits=args.logits_out is not None,
            chunk=args.chunk or None,
        )
    except (checkpoint.CheckpointError, ValueError) as e:  # QuantizationError, ShardingError too
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.logits_out:
        np.save(args.logits_out, result.logits.astype(np.float32))
    text = "" if tokenizer is None else tokenizer.decode(result.tokens)
    if args.json:
        print(json.dumps({"prompt_tokens": result.prompt_tokens, "tokens": result.tokens, "text": text}))
    else:
        print(text if tokenizer is not None else " ".join(map(str, result.tokens)))
    return 0


def cmd_characterize(args) -> int:
    from .report import characterize

    return characterize.main(out_dir=args.out, model=args.model)


def cmd_fusion(args) -> int:
    from .backends.generate import BackendUnavailable, require_device
    from .backends.spec import BACKENDS
    from .lab import fusion, fusion_matrix

    rows = fusion_matrix.ROWS if args.dtype == "float32" else fusion_matrix.ROWS_VS_BF16
    if args.rows:
        given = [r.split(":") for r in args.rows.split(",")]
        wanted = {fusion_matrix.row_parts((p + ["default"])[:2] + p[2:3]) for p in given}
        known = {fusion_matrix.row_parts(r) for r in rows}
        missing = [":".join(w) for w in sorted(wanted - known)]
        if missing:
            return _fail(
                f"--rows: not rows of the {args.dtype} matrix: {', '.join(missing)}; "
                f"known: {', '.join(':'.join(r) for r in sorted(known))}"
            )
        rows = tuple(r for r in rows if fusion_matrix.row_parts(r) in wanted)
    parts = tuple(args.parts.split(","))
    unknown = sorted(set(parts) - set(fusion.PARTS))
    if unknown:
        return _fail(f"--parts: unknown {', '.join(unknown)}; known: {', '.join(fusion.PARTS)}")
    if args.steps < 1:
        return _fail(f"--steps must be at least 1, got {args.steps}")
    backends = args.backends.split(",")
    bad = [b for b in backends if b not in BACKENDS]
    if bad:
        return _fail(f"--backends: unknown {', '.join(bad)}; known: {', '.join(BACKENDS)}")
    try:
        for b in backends:  # before the 1B-shape weights are made
            require_device(b)
    except BackendUnavailable as e:
        return _fail(str(e))
    fusion.run(backends, args.out, args.parity_model, args.steps, rows, dtype=args.dtype, parts=parts)
    return 0


def cmd_tp(args) -> int:
    from .backends.generate import BackendUnavailable, require_device
    from .lab import tensor_parallel as tpl
    from .llama.sharding import host_devices

    try:
        tps = tuple(_ints("--tp", args.tp))
    except ValueError as e:
        return _fail(str(e))
    if min(tps) < 1:
        return _fail(f"--tp degrees must be at least 1, got {args.tp}")
    if args.steps < 1:
        return _fail(f"--steps must be at least 1, got {args.steps}")
    modes = {m[0]: m for m in tpl.MODES}
    wanted = args.modes.split(",") if args.modes else list(modes)
    shapes, parity = args.shapes.split(","), args.parity_shapes.split(",")
    unknown = [m for m in wanted if m not in modes] + [s for s in shapes + parity if s not in tpl.SHAPES]
    if unknown:
        return _fail(f"unknown {', '.join(unknown)}; modes: {', '.join(modes)}; shapes: {', '.join(tpl.SHAPES)}")
    try:
        require_device(args.backend)
    except BackendUnavailable as e:
        return _fail(str(e))
    if args.backend == "xla-cpu":
        host_devices(max(tps))
    tpl.run(
        args.backend,
        args.out,
        shapes,
        [modes[m] for m in wanted],
        tps,
        args.steps,
        tuple(parity),
    )
    return 0


def cmd_verdict(args) -> int:
    from pathlib import Path

    from .backends.spec import BACKENDS
    from .lab import verdict

    parts = tuple(p for p in args.parts.split(",") if p)
    unknown = sorted(set(parts) - set(verdict.PARTS))
    if unknown or not parts:
        return _fail(f"--parts: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(verdict.PARTS)}")
    if args.shapes not in verdict.SHAPES:
        return _fail(f"--shapes: unknown {args.shapes!r}; known: {', '.join(verdict.SHAPES)}")
    if args.steps < 1:
        return _fail(f"--steps must be at least 1, got {args.steps}")
    forms = None
    if args.forms:
        try:
            forms = verdict.parse_forms(args.forms)
        except ValueError as e:
            return _fail(f"--forms: {e}")
    if args.resume:
        resume = Path(args.resume)
        try:
            kind = json.loads(resume.read_text()).get("kind")
        except (OSError, ValueError, AttributeError) as e:
            return _fail(f"--resume {resume}: not a readable verdict file ({type(e).__name__})")
        if kind != "verdict":
            return _fail(f"--resume {resume}: not a verdict file (kind {kind!r})")
    try:
        backends = args.backend.split(",") if args.backend else verdict.default_backends()
        bad = [b for b in backends if b not in BACKENDS]
        if bad:
            return _fail(f"--backend: unknown {', '.join(bad)}; known: {', '.join(BACKENDS)}")
        plan = verdict.Plan(args.shapes, args.dtype, args.steps, args.parity_model, args.quick, parts, forms=forms)
        data = verdict.run(
            backends, Path(args.out) if args.out else None, plan, Path(args.resume) if args.resume else None
        )
    except (ValueError, FileExistsError) as e:  # BackendUnavailable, a resume of another plan
        return _fail(str(e))
    from .report import verdict_section

    data["file"] = str(Path(args.out or args.resume or verdict.default_out(data["environment"])))
    print("\n".join(verdict_section.render_run(data)))
    return 0


def cmd_decision(args) -> int:
    """Print the per-machine decision table from the committed results; ``--readme``: rewrite
    the README's generated block with it."""
    import re
    from pathlib import Path

    from .report import verdict_section

    runs = verdict_section.load()
    block = verdict_section.readme_block(runs, verdict_section.load_upstream())
    if args.readme:
        readme = Path(__file__).resolve().parents[1] / "README.md"
        text = readme.read_text()
        pattern = re.escape(verdict_section.README_START) + ".*?" + re.escape(verdict_section.README_END)
        if not re.search(pattern, text, flags=re.S):
            print(f"error: {readme}: no generated block ({verdict_section.README_START})", file=sys.stderr)
            return 2
        readme.write_text(re.sub(pattern, lambda _: block, text, flags=re.S))
    print(block)
    return 0


def cmd_record_peer(args) -> int:
    """Run mlx_lm greedy on the half-precision variants of the embedded model and write the
    recording the tests read (``model_impl/data/mlx_peer_greedy.json``)."""
    import tempfile
    from pathlib import Path

    from . import checkpoints as checkpoint
    from . import checks
    from .checks import mlx_peer

    prompt = checkpoint.load_tokenizer(None)(checks.REFERENCE_PROMPT).input_ids
    with tempfile.TemporaryDirectory() as tmp:
        hf = mlx_peer.write_hf_dir(None, Path(tmp) / "hf")
        entries = []
        for dtype, bits, group in mlx_peer.HALF_VARIANTS:
            name = mlx_peer.variant_name(dtype, bits, group)
            entries.append((name, mlx_peer.convert(hf, Path(tmp) / name, bits, group, dtype)))
        out = mlx_peer.record(entries, prompt, checks.GREEDY_TOKENS)
    for run in out["runs"]:
        print(f"{run['variant']}: {len(run['tokens'])} tokens")
    print(f"wrote {mlx_peer.RECORDED}")
    return 0


def main(argv=None) -> int:
    from .backends.spec import BACKENDS
    from .llama.config import DTYPES
    from .llama.graphs import DECODE_CHUNK
    from .llama.representations import REPRESENTATIONS

    parser = argparse.ArgumentParser(prog="python -m model_impl")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="greedy generation with the JAX Llama")
    g.add_argument("--model", help="a GGUF file or an HF directory (default: embedded SmolLM2-135M)")
    g.add_argument(
        "--quant",
        choices=("dense", "int4", "fp32"),
        default="dense",
        help="dense weights, or int4 (MLX affine, group 64) dequantized in the graph; fp32 = dense",
    )
    g.add_argument(
        "--dtype",
        choices=DTYPES,
        help="compute dtype (default: the checkpoint's; the embedded GGUF decodes to float32)",
    )
    g.add_argument("--backend", choices=BACKENDS, default="xla-cpu")
    g.add_argument(
        "--representation",
        choices=REPRESENTATIONS,
        help="in-graph form of the int4 weights (default: u32-affine, MLX's words)",
    )
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text (tokenized with the checkpoint's tokenizer)")
    src.add_argument("--token-ids", help="prompt as comma-separated token ids, e.g. 1,2,3")
    g.add_argument("--iree-cuda-target", help="IREE CUDA target, e.g. sm_80 (default: chosen from the GPU)")
    g.add_argument("--max-new-tokens", type=int, default=48)
    g.add_argument("--ignore-eos", action="store_true", help="do not stop at an EOS token")
    g.add_argument(
        "--chunk",
        type=int,
        default=DECODE_CHUNK,
        help=f"decode steps per dispatch of the on-device loop (default {DECODE_CHUNK}); 0: one dispatch per step",
    )
    g.add_argument(
        "--tp",
        type=int,
        default=1,
        help="tensor-parallel degree on the XLA backends (GSPMD; xla-cpu uses that many host devices)",
    )
    g.add_argument("--logits-out", metavar="FILE.npy", help="write float32 [len(tokens), vocab]")
    g.add_argument("--json", action="store_true", help="print one JSON object")
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("characterize", help="run the checks and write reports/findings.{md,json}")
    c.add_argument("--out", default="reports/")
    c.add_argument("--model", help="a GGUF file or an HF directory (default: embedded SmolLM2-135M)")
    c.set_defaults(func=cmd_characterize)

    f = sub.add_parser("fusion", help="the fusion matrix: int4 representations x options x backends")
    f.add_argument("--backends", default="xla-cpu,iree-cpu", help=f"comma-separated, of {BACKENDS}")
    f.add_argument("--out", required=True, help="results JSON, e.g. results/fusion-cpu.json")
    f.add_argument(
        "--parity-model",
        default="default",
        help="checkpoint for the parity runs: a path, 'default' (SmolLM2) or 'synthetic'",
    )
    f.add_argument("--steps", type=int, default=8, help="decode steps timed per cell")
    f.add_argument("--rows", help="only these rows: representation[:option[:head]],...")
    f.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="compute dtype; bfloat16: the matrix against the fastest dense bf16 form, with the torch anchors on a GPU",
    )
    f.add_argument("--parts", default="anchors,cells,batch", help="what to measure (half precision on a GPU)")
    f.set_defaults(func=cmd_fusion)

    t = sub.add_parser("tp", help="the tensor-parallel study: decode at TP 1 and N, collectives, their share")
    t.add_argument("--backend", default="xla-cuda", choices=[b for b in BACKENDS if b.startswith("xla")])
    t.add_argument("--out", required=True, help="results JSON, e.g. results/tp-h100x2.json")
    t.add_argument("--shapes", default="llama-3.2-1b,llama-3.1-8b", help="comma-separated real shapes")
    t.add_argument("--modes", help="comma-separated, default all: bf16,int4-u32-affine,int4-u4-magic")
    t.add_argument("--tp", default="1,2", help="tensor-parallel degrees, comma-separated")
    t.add_argument("--steps", type=int, default=32, help="decode steps per dispatch")
    t.add_argument("--parity-shapes", default="llama-3.2-1b", help="shapes whose TP N tokens are set against TP 1")
    t.set_defaults(func=cmd_tp)

    v = sub.add_parser(
        "verdict",
        help="int4 against the best bf16 on this machine: every dense form, padded batches, qualifying int4 forms",
    )
    v.add_argument("--backend", help=f"comma-separated, of {BACKENDS} (default: this machine's GPU backends, else CPU)")
    v.add_argument("--out", help="results JSON (default results/verdict-<machine>-<date>.json)")
    v.add_argument(
        "--resume",
        metavar="FILE",
        help="continue a verdict file: measure only what it lacks (written to --out if given)",
    )
    v.add_argument(
        "--parts", default="bandwidth,dense,int4,anchors,profile,generate", help="what to measure, comma-separated"
    )
    v.add_argument("--quick", action="store_true", help="batch 1 only, three int4 forms (about 2 minutes on a GPU)")
    v.add_argument(
        "--forms",
        help="only these int4 candidates: representation[:layout[:head]],... (default: every candidate; "
        "layout default or stacked, head dot, reduce or int4)",
    )
    v.add_argument(
        "--shapes",
        default="llama-3.2-1b",
        help="llama-3.2-1b, llama-3.1-8b, smollm2-135m (a CPU's size), or tiny (a 2-layer test model)",
    )
    v.add_argument("--dtype", choices=("bfloat16", "float16"), default="bfloat16", help="compute dtype")
    v.add_argument("--steps", type=int, default=32, help="decode steps per timed loop")
    v.add_argument(
        "--parity-model",
        default="synthetic",
        help="checkpoint for the parity checks: 'synthetic' (the shapes' seeded weights), 'default' (SmolLM2), a path",
    )
    v.set_defaults(func=cmd_verdict)

    d = sub.add_parser("decision", help="the per-machine decision table from the committed results")
    d.add_argument("--readme", action="store_true", help="rewrite the README's generated table")
    d.set_defaults(func=cmd_decision)

    r = sub.add_parser("record-peer", help="record mlx_lm's greedy tokens on the half-precision checkpoints")
    r.set_defaults(func=cmd_record_peer)

    from .lab import iree_cuda_study, iree_multidevice, pallas_sweep, versions

    pallas_sweep.add_parser(sub)
    iree_cuda_study.add_parser(sub)
    iree_multidevice.add_parser(sub)
    versions.add_parser(sub)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
