#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of hostile input (`make fuzz`, `make fuzz-smoke`).
#
#   bash scripts/fuzz.sh [smoke] [TARGET...]
#
# Installs what it needs, idempotently, under ${LANEMESH_CACHE:-$HOME/.cache/lanemesh}:
# cargo-afl (crates.io, the version Cargo.lock pins for the afl crate) in cargo-bin/, the
# AFL++ it builds from source (`cargo afl config --build`, plain stable Rust, no LLVM
# plugins) in afl-data/. Builds the targets of fuzz/ instrumented in fuzz-target/ (its own
# target dir: the instrumented flags would rebuild the shared one), runs each for
# FUZZ_SECONDS (600; 15 with `smoke`) on fuzz/corpus/<target>, FUZZ_JOBS (1) at a time,
# prints target / seconds / execs / paths / crashes / hangs and exits 1 if any target
# crashed or could not run. Findings stay in fuzz-out/<target>/default/{crashes,hangs} and
# afl-fuzz's output in fuzz-out/<target>.log until the next run of that target moves them to
# fuzz-out/<target>.prev (runs take turns on fuzz-out/.lock); reproduce a finding with
#   cargo run -p lanemesh-fuzz --bin TARGET -- FILE
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export LANEMESH_CACHE="${LANEMESH_CACHE:-$HOME/.cache/lanemesh}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export CARGO_INCREMENTAL=0

default_seconds=600
if [ "${1:-}" = smoke ]; then
  default_seconds=15
  shift
fi
seconds="${FUZZ_SECONDS:-$default_seconds}"
jobs="${FUZZ_JOBS:-1}"
all_targets=(h1-request h1-response h1-chunked detect discovery manifest path-normalize exposition baggage)
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=("${all_targets[@]}")
for t in "${targets[@]}"; do
  [ -d "fuzz/corpus/$t" ] || { echo "fuzz.sh: unknown target $t (known: ${all_targets[*]})" >&2; exit 2; }
done

log() { printf '==> %s\n' "$*" >&2; }

# --- tools -------------------------------------------------------------------------------
# AFL++ is built from C sources: a C compiler and make. Installed when root; otherwise a
# missing tool is an error, never a silent skip.
missing=()
command -v cc >/dev/null || missing+=(gcc)
command -v make >/dev/null || missing+=(make)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  else
    echo "fuzz.sh: ${missing[*]} missing and not root to install them" >&2
    exit 1
  fi
fi

cargo_bin="$LANEMESH_CACHE/cargo-bin"
export PATH="$cargo_bin/bin:$PATH"
# cargo-afl keeps AFL++ and its runtime in the XDG data dir, keyed by rustc version.
export XDG_DATA_HOME="$LANEMESH_CACHE/afl-data"
afl_version="$(awk '/^name = "afl"$/ { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)"
[ -n "$afl_version" ] || { echo "fuzz.sh: no afl crate in Cargo.lock" >&2; exit 1; }
# The runtime cargo-afl links must match the afl crate's calls into it: same version.
if ! cargo afl --version 2>/dev/null | grep -q "cargo-afl $afl_version\b"; then
  log "installing cargo-afl $afl_version into $cargo_bin"
  cargo install --locked --force --quiet cargo-afl --version "=$afl_version" --root "$cargo_bin"
fi
# AFL++ and its runtime, built once per rustc and cargo-afl version.
afl_home() {
  ls -d "$XDG_DATA_HOME"/afl.rs/rustc-"$(rustc -V | awk '{print $2}')"-*/afl.rs-"$afl_version" 2>/dev/null | head -n1
}
home="$(afl_home)"
if [ -z "$home" ] || [ ! -f "$home/afl-llvm/afl-compiler-rt.o" ] || [ ! -x "$home/afl/bin/afl-fuzz" ]; then
  log "building AFL++ (cargo afl config --build)"
  cargo afl config --build --force
  home="$(afl_home)"
fi
afl_bin="$home/afl/bin"
[ -x "$afl_bin/afl-fuzz" ] || { echo "fuzz.sh: afl-fuzz missing after cargo afl config --build" >&2; exit 1; }

# One run at a time: a second one (another shell's `make test`) would build into the same
# target dir and delete the output directories the first is writing to. It waits its turn.
out_root="$LANEMESH_CACHE/fuzz-out"
mkdir -p "$out_root"
exec 9>"$out_root/.lock"
if ! flock -n 9; then
  log "another fuzz.sh holds $out_root/.lock; waiting for it"
  flock 9
fi

# --- build -------------------------------------------------------------------------------
fuzz_target="$LANEMESH_CACHE/fuzz-target"
log "building the fuzz targets instrumented (into $fuzz_target)"
# Line tables only: panics in findings keep file:line, the build stays small.
CARGO_TARGET_DIR="$fuzz_target" CARGO_PROFILE_DEV_DEBUG=line-tables-only \
  cargo afl build --locked --quiet -p lanemesh-fuzz --bins

# --- run ---------------------------------------------------------------------------------
export AFL_NO_UI=1
export AFL_SKIP_CPUFREQ=1
export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
# The machine is shared: do not pin to a core another build is using.
export AFL_NO_AFFINITY=1

run_one() {
  local t="$1" out="$out_root/$1"
  # The previous run's findings are kept one run longer: a smoke right after a long run must
  # not delete what the long run found before anyone looked.
  rm -rf "$out.prev" "$out.log" "$out.status"
  if [ -d "$out" ]; then mv "$out" "$out.prev"; fi
  # -V: stop after the time; -t: a parser taking over a second on one input is a hang.
  if "$afl_bin/afl-fuzz" -V "$seconds" -t 1000 -i "fuzz/corpus/$t" -o "$out" \
    -- "$fuzz_target/debug/$t" >"$out.log" 2>&1; then
    echo ok >"$out.status"
  else
    echo "afl-fuzz exited $?" >"$out.status"
  fi
}

log "fuzzing ${targets[*]}: ${seconds}s each, $jobs at a time"
running=0
for t in "${targets[@]}"; do
  run_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait || true

stat() { awk -F' *: *' -v k="$2" '$1 == k { print $2 }' "$1" 2>/dev/null; }
failed=0
printf '\n| %-15s | %7s | %12s | %6s | %7s | %5s |\n' target seconds execs paths crashes hangs
printf '|%s|%s|%s|%s|%s|%s|\n' ----------------- --------- -------------- -------- --------- -------
for t in "${targets[@]}"; do
  out="$out_root/$t"
  stats="$out/default/fuzzer_stats"
  status="$(cat "$out.status" 2>/dev/null || echo 'not run')"
  if [ "$status" != ok ] || [ ! -f "$stats" ]; then
    printf '| %-15s | %s: see %s |\n' "$t" "$status" "$out.log"
    tail -n 15 "$out.log" >&2 2>/dev/null || true
    failed=1
    continue
  fi
  crashes="$(stat "$stats" saved_crashes)"
  printf '| %-15s | %7s | %12s | %6s | %7s | %5s |\n' "$t" "$(stat "$stats" run_time)" \
    "$(stat "$stats" execs_done)" "$(stat "$stats" corpus_count)" "$crashes" "$(stat "$stats" saved_hangs)"
  if [ "${crashes:-0}" != 0 ]; then
    failed=1
  fi
done
echo
if [ "$failed" != 0 ]; then
  echo "fuzz.sh: crashes or failed runs; inputs under $out_root/<target>/default/crashes" >&2
  exit 1
fi
