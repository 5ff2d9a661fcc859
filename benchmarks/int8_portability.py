"""Does an int8 model compute the same numbers on CPUs without VNNI? Run it here and under QEMU, compare.

    .venv/bin/python -m benchmarks.int8_portability [MODEL.onnx ...] [--cpu Haswell] [--photos 24]

onnxruntime picks its integer kernels by CPU: with VNNI (AVX512-VNNI, AVX-VNNI) a u8·s8 dot product
accumulates in 32 bits; on AVX2-only CPUs it sums pairs of products in 16 bits, with saturation.
Lambda's x86 fleet has both kinds. This script runs each model on the same preprocessed photos twice,
natively and under ``qemu-x86_64 -cpu <model>`` (user-mode emulation of a CPU without VNNI; Debian:
``apt-get install qemu-user``), and prints the largest difference per output. 7-bit weights
(``Recipe.reduce_range``) make them identical. Slow by nature: about 3.5 s per photo under emulation.

Photos: the run's validation photos from ``../shared`` when present, else drawn eyes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import int8
from benchmarks.common import BUNDLED_MODEL_DIR, RUNS_DIR, SHARED_TRAIN, int8_variant, small_photo

OUTPUTS = ("logits", "embedding", "ood_distance", "mid_distance")

# Runs in a child process (natively, or under QEMU): the model's outputs for the saved tensors.
_CHILD = """
import sys, numpy as np, onnxruntime as ort
model, tensors, out = sys.argv[1:4]
opts = ort.SessionOptions(); opts.intra_op_num_threads = 1; opts.log_severity_level = 3
sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
names = [o.name for o in sess.get_outputs()]
x = np.load(tensors)
rows = [dict(zip(names, sess.run(None, {"input": x[i : i + 1]}))) for i in range(len(x))]
np.savez(out, **{n: np.concatenate([r[n] for r in rows]) for n in names})
"""


def photos(n: int) -> tuple[list[bytes], str]:
    """``n`` photos as bytes, and where they came from."""
    run_split = sorted(RUNS_DIR.glob("*/split.json"))
    if SHARED_TRAIN.is_dir() and run_split:
        keys = json.loads(run_split[-1].read_text(encoding="utf-8"))["val"]
        files = [SHARED_TRAIN / k for k in keys if (SHARED_TRAIN / k).is_file()][:n]
        return [f.read_bytes() for f in files], f"{len(files)} validation photos of {run_split[-1].parent.name}"
    return [small_photo(("cataract", "normal")[i % 2], seed=i) for i in range(n)], f"{n} drawn eyes"


def tensors(data: list[bytes], model: Path) -> np.ndarray:
    """The photos preprocessed the way serving does, for the manifest beside ``model`` (default input otherwise)."""
    from cataract_inference.imaging import load_for_model
    from cataract_inference.manifest import InputSpec, load_manifest

    manifest = model.parent / "model.json"
    spec = load_manifest(manifest).input if manifest.is_file() else InputSpec()
    return np.stack([load_for_model(b, spec)[1] for b in data]).astype(np.float32)


def run(model: Path, x: Path, out: Path, cpu: str | None) -> dict[str, np.ndarray]:
    """The model's outputs on ``x``, natively (``cpu`` None) or under QEMU emulating ``cpu``."""
    prefix = [] if cpu is None else ["qemu-x86_64", "-cpu", cpu]
    subprocess.run(
        [*prefix, sys.executable, "-c", _CHILD, str(model), str(x), str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # QEMU warns about every CPUID bit it cannot emulate
    )
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


def compare(native: dict[str, np.ndarray], emulated: dict[str, np.ndarray]) -> list[tuple[str, float, float]]:
    """(output, max abs difference, max relative difference) for each compared output."""
    rows = []
    for name in OUTPUTS:
        if name in native and name in emulated:
            diff = np.abs(native[name] - emulated[name])
            rel = diff / np.maximum(np.abs(native[name]), 1e-6)
            rows.append((name, float(diff.max()), float(rel.max())))
    return rows


def default_model(work: Path) -> list[Path]:
    """The newest run's int8 export, else the bundled model rebuilt in int8 under ``work`` (``int8.rebuild``);
    nothing, having said why, when neither can be had."""
    pair = int8_variant()
    if pair is not None:
        return [pair[1] / "model.onnx"]
    try:
        rebuilt = int8.rebuild(BUNDLED_MODEL_DIR, SHARED_TRAIN, work / "rebuild")
    except int8.CannotRebuild as exc:
        print(f"No model given, no run under runs/ has an int8 export, and none can be rebuilt here: {exc}.")
        return []
    print(rebuilt.origin)
    return [rebuilt.int8 / "model.onnx"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "models",
        nargs="*",
        type=Path,
        help="ONNX files (default: the newest run's int8 export, else the bundled model rebuilt in int8)",
    )
    parser.add_argument("--cpu", default="Haswell", help="QEMU CPU model without VNNI (default Haswell: AVX2)")
    parser.add_argument("--photos", type=int, default=24)
    args = parser.parse_args(argv)
    if shutil.which("qemu-x86_64") is None:
        print("qemu-x86_64 is not installed (Debian: apt-get install qemu-user); nothing to compare.")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        models = list(args.models) or default_model(Path(tmp))
        if not models:
            return 2
        data, source = photos(args.photos)
        print(f"Photos: {source}. Emulated CPU: {args.cpu} (no VNNI).\n")
        print("| model | output | max abs difference | max relative difference |")
        print("|---|---|---:|---:|")
        for model in models:
            x = Path(tmp) / "x.npy"
            np.save(x, tensors(data, model))
            native = run(model, x, Path(tmp) / "native.npz", None)
            emulated = run(model, x, Path(tmp) / "emulated.npz", args.cpu)
            for name, abs_diff, rel_diff in compare(native, emulated):
                print(f"| {model} | {name} | {abs_diff:.3g} | {rel_diff:.3g} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
