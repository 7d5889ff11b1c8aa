#!/usr/bin/env bash
# Run every cargo-fuzz target of fuzz/ for N seconds each (default 600) and record the
# result in benchmarks/results/fuzz.json: targets, seconds, runs, coverage, crashes. Targets
# not run this time keep their previous entry (each entry has the date of its run).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Not part of CI (needs minutes and nightly-only flags). Only stable Rust is assumed:
# cargo-fuzz runs under RUSTC_BOOTSTRAP=1. Seeds (a valid sharded checkpoint) are made
# with the Python extension when it is importable. Exit status 1 when a target crashed;
# the crashing input is under fuzz/artifacts/<target>/ (replay: cargo fuzz run T FILE).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SECONDS_PER_TARGET="${1:-600}"
shift || true
ALL=(unpack read_header shard_index validate)
TARGETS=("${@:-${ALL[@]}}")
PY="${PYTHON:-$ROOT/.venv/bin/python}"
export RUSTC_BOOTSTRAP=1
cd "$ROOT/fuzz"

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
nice cargo fuzz build >&2
LOGS="$(mktemp -d)"
trap 'rm -rf "$LOGS"' EXIT

# seed corpora: a valid 2-shard checkpoint (its header, index and config are the inputs)
if "$PY" -c "import vptq_rs._core" 2>/dev/null; then
  "$PY" - "$ROOT/fuzz/corpus" <<'PYEOF'
import json, sys, tempfile
from pathlib import Path
from vptq_rs import _core
corpus = Path(sys.argv[1])
with tempfile.TemporaryDirectory() as d:
    d = Path(d)
    # the same fixture the reliability tests use, without importing torch
    entry = {"in_features": 32, "out_features": 16, "vector_lens": [-1, 4],
             "num_centroids": [-1, 16], "num_res_centroids": [-1, 8], "group_num": 2,
             "group_size": 16, "outlier_size": 0, "enable_norm": True, "enable_perm": True,
             "is_indice_packed": True, "bias": False}
    cfg = {"quantization_config": {"quant_method": "vptq",
           "config_for_layers": {"l.q": entry}, "shared_layer_config": {}}}
    t = [("l.q.centroids.weight", "F16", [2, 64], bytes(256)),
         ("l.q.res_centroids.weight", "F16", [2, 32], bytes(128)),
         ("l.q.indices", "I32", [2, 4, 4], bytes(128)), ("l.q.perm", "I16", [32], bytes(64)),
         ("l.q.weight_scale", "F16", [32], bytes(64)), ("l.q.weight_bias", "F16", [32], bytes(64))]
    files = _core.save_tensors(str(d), t, 300, None)
    for name, data in (("read_header", (d / files[0]).read_bytes()),
                       ("shard_index", (d / "model.safetensors.index.json").read_bytes())):
        (corpus / name).mkdir(parents=True, exist_ok=True)
        (corpus / name / "seed-valid").write_bytes(data)
    (corpus / "validate").mkdir(parents=True, exist_ok=True)
    # an odd first byte: the rest is config.json as is
    (corpus / "validate" / "seed-config").write_bytes(b"\x01" + json.dumps(cfg).encode())
PYEOF
fi

for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  ls "artifacts/$t" > "$LOGS/$t.before"
  echo "== fuzzing $t for ${SECONDS_PER_TARGET}s" >&2
  set +e
  nice cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$SECONDS_PER_TARGET" \
    -rss_limit_mb=2048 -timeout=30 -print_final_stats=1 > "$LOGS/$t.log" 2>&1
  echo $? > "$LOGS/$t.rc"
  set -e
  ls "artifacts/$t" > "$LOGS/$t.after"
  tail -3 "$LOGS/$t.log" >&2
done

"$PY" - "$LOGS" "$SECONDS_PER_TARGET" "$ROOT" "${TARGETS[@]}" <<'PYEOF'
import json, re, subprocess, sys
from pathlib import Path
logs, secs, root, targets = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:]
sys.path.insert(0, str(root / "benchmarks"))
from _meta import write
out = []
for t in targets:
    log = (logs / f"{t}.log").read_text(errors="replace")
    def last(pat, cast=int):
        m = re.findall(pat, log)
        return cast(m[-1]) if m else None
    before = set((logs / f"{t}.before").read_text().split())
    after = set((logs / f"{t}.after").read_text().split())
    new = sorted(after - before)
    crash_lines = [l for l in log.splitlines() if "panicked at" in l or "ERROR: libFuzzer" in l]
    out.append({
        "target": t,
        "date": __import__("time").strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                                     capture_output=True, text=True).stdout.strip(),
        "seconds": secs,
        "exit_code": int((logs / f"{t}.rc").read_text()),
        "runs": last(r"stat::number_of_executed_units:\s*(\d+)") or last(r"Done (\d+) runs"),
        "execs_per_s": last(r"stat::average_exec_per_sec:\s*(\d+)"),
        "coverage": last(r"cov: (\d+)"),
        "features": last(r"ft: (\d+)"),
        "corpus_units": len(list((root / "fuzz" / "corpus" / t).glob("*"))),
        "peak_rss_mb": last(r"stat::peak_rss_mb:\s*(\d+)"),
        "crashes_found": len(new),
        "crash_files": [f"fuzz/artifacts/{t}/{f}" for f in new],
        "crash_messages": crash_lines[:4],
    })
def tool(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return None
prev = root / "benchmarks" / "results" / "fuzz.json"
kept = []
if prev.exists():
    kept = [r for r in json.loads(prev.read_text()).get("targets", []) if r["target"] not in targets]
    for r in kept:
        r.setdefault("note", "kept from an earlier run of this script")
out = sorted(kept + out, key=lambda r: r["target"])
write("fuzz", {
    "what": "cargo-fuzz (libFuzzer) on vptq-core parsers of untrusted bytes",
    "command": f"scripts/fuzz.sh {secs} {' '.join(targets)}",
    "targets_run_this_time": targets,
    "rustc": tool("rustc", "--version"),
    "cargo_fuzz": tool("cargo", "fuzz", "--version"),
    "load_average_at_end": list(__import__("os").getloadavg()),
    "targets": out,
    "total_crashes": sum(r["crashes_found"] for r in out),
})
print(json.dumps(out, indent=1))
sys.exit(1 if any(r["crashes_found"] for r in out if r["target"] in targets) else 0)
PYEOF
