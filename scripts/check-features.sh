#!/usr/bin/env bash
# Fails when a dependency would be compiled with different features by `make run`
# (`cargo build -p genrt-runtime`), the workspace's binaries (`make test`'s build), the
# benchmarks alone (`make bench`, `-p genrt-benchmarks`) and `cargo test` (which adds
# dev-dependencies): each difference means a second compilation of that
# crate and of everything above it. The cure is a line under "Feature unification" in
# runtime/Cargo.toml. This is the check cargo-hakari's `verify` makes, on our three builds
# alone, without a generated workspace-hack crate.
set -euo pipefail
cd "$(dirname "$0")/.."

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tree() { # tree <out> <cargo tree args...>: one "package [features]" line per target package
  local out=$1
  shift
  # --target limits the list to what runs on the target: build scripts and proc macros are
  # compiled for the host apart anyway, with their own settings.
  cargo tree --target "$(rustc -vV | sed -n 's/^host: //p')" -e normal "$@" \
    -f '{p} [{f}]' --prefix none --no-dedupe | sort -u >"$out"
}
tree "$tmp/run" -p genrt-runtime
tree "$tmp/workspace" --workspace
tree "$tmp/bench" -p genrt-benchmarks
tree "$tmp/test" --workspace -e dev

python3 - "$tmp" <<'PY'
import sys
tmp = sys.argv[1]
def load(name):
    features = {}
    for line in open(f"{tmp}/{name}"):
        package, _, rest = line.strip().rpartition(" [")
        if package:
            features.setdefault(package, set()).add(rest.rstrip("]"))
    return features
builds = {name: load(name) for name in ("run", "workspace", "bench", "test")}
differences = []
for a, b in (("run", "workspace"), ("bench", "workspace"), ("workspace", "test")):
    for package in sorted(builds[a].keys() & builds[b].keys()):
        if builds[a][package] != builds[b][package]:
            differences.append(f"  {package}: {a} {sorted(builds[a][package])} vs {b} {sorted(builds[b][package])}")
if differences:
    print("check-features: these crates would be compiled twice (add them under "
          "\"Feature unification\" in runtime/Cargo.toml with the wider feature set):")
    print("\n".join(differences))
    sys.exit(1)
print(f"check-features: {len(builds['test'])} crates, one feature set each across make run, "
      "the workspace build, the benchmarks and cargo test")
PY
