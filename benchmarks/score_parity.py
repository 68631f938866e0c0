"""Snapshot every command's scores, to show that a refactoring changed no byte of them.

    python benchmarks/score_parity.py snapshot OUT_DIR [--real]   # before the change
    python benchmarks/score_parity.py snapshot OUT_DIR2 [--real]  # after it
    python benchmarks/score_parity.py compare OUT_DIR OUT_DIR2

On the toy demo's model and data (seconds): score with adapters, score with anchors,
project, anchor-direction (its tensors) and every baseline method; with --real also the
zero-configuration score of the SmolLM2 demo. Each run's output table is reduced to its
score columns (timings and paths differ between runs, scores must not) and hashed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

SCORE_FIELDS = ("index", "sqsd", "p_danger", "p_safety", "projection", "score", "rank",
                "n_tokens", "n_response_tokens", "status")


def _cli(*args) -> None:
    subprocess.run([sys.executable, "-m", "sqsd_fast.app.cli", *map(str, args), "--quiet"], check=True)


def _table_digest(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kept = [{k: row[k] for k in SCORE_FIELDS if k in row} for row in rows]
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def _tensors_digest(directory: Path) -> str:
    from safetensors.torch import load_file
    digest = hashlib.sha256()
    for file in sorted(directory.glob("*.safetensors")):
        for name, tensor in sorted(load_file(str(file)).items()):
            digest.update(name.encode())
            digest.update(tensor.contiguous().view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    return digest.hexdigest()


def _fresh_cache(out: Path) -> None:
    """A cache of its own, so states and anchor directions are computed, not read back; the
    downloaded and converted models are lent from the usual cache."""
    usual = Path(os.environ.get("SQSD_FAST_CACHE", Path.home() / ".cache" / "sqsd_fast"))
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    for lent in ("downloads", "gguf"):
        if (usual / lent).exists() and not (cache / lent).exists():
            (cache / lent).symlink_to(usual / lent)
    os.environ["SQSD_FAST_CACHE"] = str(cache)


def snapshot(out: Path, real: bool) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    _fresh_cache(out)
    toy = out / "toy"
    subprocess.run([sys.executable, "-m", "sqsd_fast.demo", "--toy", "--out-dir", str(toy), "--no-progress"],
                   check=True, capture_output=True)
    model, data = toy / "model", toy / "demo_data.jsonl"
    anchors = out / "anchors.jsonl"
    anchors.write_text("".join(data.read_text().splitlines(keepends=True)[:6]))
    common = ["--model", model, "--data", data, "--max-length", 64, "--batch-size", 5]
    _cli("score", *common, "--danger-anchors", anchors, "--safety-anchors", anchors,
         "--danger-state", toy / "danger_state", "--out", out / "anchored.jsonl")
    _cli("project", *common, "--state", toy / "danger_state", "--direction", toy / "danger_direction",
         "--out", out / "project.jsonl")
    _cli("anchor-direction", "--model", model, "--state", toy / "danger_state", "--anchors", anchors,
         "--out", out / "anchor_direction")
    for method in ("length", "random", "self-inf", "self-inf-n", "gradmatch"):
        extra = [] if method in ("length", "random") else ["--state", toy / "danger_state"]
        if method == "gradmatch":
            extra += ["--harmful-anchors", anchors, "--safe-anchors", anchors]
        _cli("baseline", *common, "--method", method, *extra,
             "--out", out / f"baseline_{method}.jsonl")
    digests = {"toy_demo_score": _table_digest(toy / "scores.jsonl"),
               "anchored_score": _table_digest(out / "anchored.jsonl"),
               "project": _table_digest(out / "project.jsonl"),
               "anchor_direction": _tensors_digest(out / "anchor_direction")}
    digests.update({f"baseline_{m}": _table_digest(out / f"baseline_{m}.jsonl")
                    for m in ("length", "random", "self-inf", "self-inf-n", "gradmatch")})
    if real:
        subprocess.run([sys.executable, "-m", "sqsd_fast.demo", "--out-dir", str(out / "real"), "--no-progress"],
                       check=True, capture_output=True)
        digests["smollm2_zero_config_score"] = _table_digest(out / "real" / "scores.jsonl")
    (out / "digests.json").write_text(json.dumps(digests, indent=1) + "\n")
    return digests


def compare(before: Path, after: Path) -> int:
    a = json.loads((before / "digests.json").read_text())
    b = json.loads((after / "digests.json").read_text())
    print(f"{'output':<28} {'identical':>9}")
    differ = 0
    for name in sorted(set(a) | set(b)):
        same = a.get(name) == b.get(name) and name in a and name in b
        differ += not same
        print(f"{name:<28} {'yes' if same else 'NO':>9}")
    return 1 if differ else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    snap = sub.add_parser("snapshot")
    snap.add_argument("out", type=Path)
    snap.add_argument("--real", action="store_true", help="also the SmolLM2 zero-configuration demo")
    comp = sub.add_parser("compare")
    comp.add_argument("before", type=Path)
    comp.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.what == "snapshot":
        print(json.dumps(snapshot(args.out, args.real), indent=1))
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
