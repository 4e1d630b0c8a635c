#!/usr/bin/env bash
# Runs every fuzz target for ${FUZZ_SECONDS:-60} seconds and fails if any of
# them finds a crash (a panic, a failed invariant, or an input slower than 10 s).
# Installs cargo-fuzz first if it is missing. See fuzz/README.md.
#
#   FUZZ_SECONDS=60        time per target
#   FUZZ_JOBS=2            targets fuzzed at once (one core each)
#   FUZZ_SANITIZER=none    none (default: quick to build, ~10x the executions
#                          of ASan; portico's only unsafe code is
#                          the allocator shim, src/alloc.rs) or address
#   FUZZ_TARGETS="a b"     a subset (default: every target, `cargo fuzz list`)
#
# The build is cargo fuzz's release build (debug assertions and overflow checks
# on) at opt-level 1 without debug info, which halves the build for ~80% of the
# executions; set CARGO_PROFILE_RELEASE_OPT_LEVEL / _DEBUG to change that.
#
# The committed corpus (fuzz/corpus/<target>) is read, never written: new
# inputs go to a scratch directory. A crash is saved under
# fuzz/artifacts/<target>/ and the command to replay it is printed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

# cargo fuzz passes -Z flags to rustc (sanitizer coverage, cfg(fuzzing)); this
# lets the stable toolchain accept them. No nightly toolchain is needed.
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
export CARGO_PROFILE_RELEASE_OPT_LEVEL=${CARGO_PROFILE_RELEASE_OPT_LEVEL:-1}
export CARGO_PROFILE_RELEASE_DEBUG=${CARGO_PROFILE_RELEASE_DEBUG:-0}
seconds=${FUZZ_SECONDS:-60}
jobs=${FUZZ_JOBS:-2}
sanitizer=${FUZZ_SANITIZER:-none}
build_flags=(--sanitizer "$sanitizer" --codegen-units 16)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked --version 0.13.2
fi

echo "== building the fuzz targets (sanitizer: $sanitizer)"
cargo fuzz build "${build_flags[@]}"

targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

fuzz_one() {
  local t=$1
  mkdir -p "$scratch/$t" "corpus/$t"
  # The first directory receives new inputs; the committed corpus is only read.
  # TMPDIR: config_file writes its input to a temporary file.
  if TMPDIR="$scratch" cargo fuzz run "${build_flags[@]}" "$t" "$scratch/$t" "corpus/$t" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 >"$scratch/$t.log" 2>&1; then
    echo 0 >"$scratch/$t.rc"
  else
    echo 1 >"$scratch/$t.rc"
  fi
}

echo "== fuzzing each target for ${seconds}s, $jobs at a time: $(echo $targets)"
for t in $targets; do
  while (($(jobs -rp | wc -l) >= jobs)); do
    wait -n || true
  done
  fuzz_one "$t" &
done
wait

failed=()
for t in $targets; do
  if [[ "$(cat "$scratch/$t.rc" 2>/dev/null)" == 0 ]]; then
    echo "$t: $(grep -E '^Done' "$scratch/$t.log" | tail -1), $(grep -oE 'cov: [0-9]+' "$scratch/$t.log" | tail -1)"
  else
    failed+=("$t")
    echo "!! $t failed:"
    tail -n 60 "$scratch/$t.log"
    echo "!! replay: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer $sanitizer $t artifacts/$t/<file>"
  fi
done

if ((${#failed[@]})); then
  echo "fuzzing found crashes in: ${failed[*]}"
  exit 1
fi
echo "fuzzing: every target ran ${seconds}s without a crash"
