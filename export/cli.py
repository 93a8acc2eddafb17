"""``jzi-export``: checkpoint -> model bundle (ONNX graphs, manifest, optional TensorRT engines).

    jzi-export ckpt.pt [-o BUNDLE] [--preset tiny|small|official] [--precision fp32|fp16|int8] [--decoder-precision fp32|int8]
               [--opset N] [--force] [--trt] [--threads N] [--json]
    jzi-export --trt-only BUNDLE     build TensorRT engines into an existing bundle, on the target device

Bad input gives one ``jzi-export: error: ...`` line on stderr and exit status 1; nothing is left behind.
"""
from __future__ import annotations

import argparse
import json
import sys

from jzi.runtime.bundle import BundleError

from .checkpoint import CheckpointError
from .config import PRESETS
from .onnx_export import DECODER_PRECISIONS, DEFAULT_OPSET, PRECISIONS, ExportError, export_bundle


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="jzi-export", description="Export a Just Zoom In checkpoint to a jzi model bundle.",
        epilog="Every export checks ONNX Runtime against PyTorch and records the figures in manifest.json.")
    p.add_argument("checkpoint", nargs="?", help="checkpoint file (the authors' .pth or a jzi checkpoint)")
    p.add_argument("-o", "--output", metavar="BUNDLE", help="bundle directory (default: CHECKPOINT-PRECISION-bundle "
                                                            "beside the checkpoint)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="model preset (default: stored in the checkpoint, "
                                                              "else inferred from its widths)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="encoder precision: fp32, fp16 (GPUs), int8 (dynamic quantisation for CPUs)")
    p.add_argument("--decoder-precision", choices=DECODER_PRECISIONS, default="fp32",
                   help="decoder precision: fp32, or int8 weights (CPUs: a 4x lighter step; gated on decisive paths)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, metavar="N", help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--force", action="store_true", help="replace an existing bundle")
    p.add_argument("--trt", action="store_true", help="also build TensorRT engines (needs TensorRT and a GPU)")
    p.add_argument("--trt-only", metavar="BUNDLE", help="build TensorRT engines into an existing bundle and exit")
    p.add_argument("--max-batch", type=int, default=None, metavar="N",
                   help="largest batch of the TensorRT optimisation profiles (default: per graph)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="ONNX Runtime threads for the parity check")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    if args.trt_only and args.checkpoint:
        p.error("give either a checkpoint or --trt-only BUNDLE, not both")
    if not args.trt_only and not args.checkpoint:
        p.error("a checkpoint is required (or --trt-only BUNDLE)")
    if args.max_batch is not None and args.max_batch < 1:
        p.error("--max-batch must be >= 1")
    return args


def _summary(bundle, manifest: dict) -> dict:
    par = manifest.get("parity", {})
    return {
        "bundle": str(bundle),
        "precision": manifest["precision"],
        "encoder_id": manifest["encoder_id"],
        "files": {role: entry["path"] for role, entry in manifest["files"].items()},
        "parity": {k: par[k] for k in ("view_encoder", "street_encoder", "decoder_rollouts", "end_to_end") if k in par},
        "tensorrt": manifest.get("tensorrt"),
    }


def _describe(bundle, manifest: dict) -> str:
    par = manifest["parity"]
    rel = max(par["view_encoder"]["max_rel"], par["street_encoder"]["max_rel"])
    trt = manifest.get("tensorrt") or {}
    engines = f"; TensorRT {trt['version']} engines built" if trt.get("engines") else "; no TensorRT engines"
    precision = manifest["precision"]
    if manifest["decoder"].get("precision", "fp32") != "fp32":
        precision += f", {manifest['decoder']['precision']} decoder"
    return (f"wrote {bundle} ({precision}): encoder rel. diff {rel:.1e}, decoder logits "
            f"{par['decoder_rollouts']['logits']['max_abs']:.1e}, greedy paths {par['decoder_rollouts']['path_agreement']:.0%} "
            f"of {par['decoder_rollouts']['queries']}, end-to-end {par['end_to_end']['path_agreement']:.0%} "
            f"of {par['end_to_end']['queries']}{engines}")


def main(argv=None) -> int:
    args = parse_args(argv)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(f"jzi-export: {msg}", file=sys.stderr, flush=True))
    try:
        if args.trt_only:
            from .tensorrt_build import build_engines

            bundle, manifest = args.trt_only, build_engines(args.trt_only, max_batch=args.max_batch, log=log)
        else:
            bundle, manifest = export_bundle(
                args.checkpoint, args.output, preset=args.preset, precision=args.precision, opset=args.opset,
                decoder_precision=args.decoder_precision,
                force=args.force, trt=args.trt, trt_max_batch=args.max_batch, threads=args.threads, log=log)
    except (ExportError, CheckpointError, BundleError) as e:
        print(f"jzi-export: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("jzi-export: interrupted; nothing written", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(_summary(bundle, manifest), indent=2))
    elif args.trt_only:
        trt = manifest["tensorrt"]
        print(f"built TensorRT {trt['version']} engines in {bundle}: {', '.join(sorted(trt['engines']))}")
    else:
        print(_describe(bundle, manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
