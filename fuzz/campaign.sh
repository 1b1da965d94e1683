#!/usr/bin/env bash
# The fuzz campaign (make fuzz) and the corpus minimisation (make fuzz-corpus), over the
# targets built by `cargo fuzz build` into $FUZZ_WORK.
#
#   campaign.sh run     each target for FUZZ_SECONDS, one libFuzzer job, seed FUZZ_SEED,
#                       resuming from its working corpus (FUZZ_WORK/corpus/<target>, seeded
#                       from fuzz/corpus/<target>); prints executions and findings per target
#   campaign.sh minimise  merges each working corpus with fuzz/corpus/<target> into a set
#                       with the same coverage, and commits a small part of it there
#                       (FUZZ_CORPUS_MAX inputs besides the named seeds and regressions)
#
# Environment: FUZZ_TARGETS, FUZZ_SECONDS, FUZZ_SEED, FUZZ_ARGS (more libFuzzer flags),
# FUZZ_CORPUS_MAX, FUZZ_WORK, FUZZ_BIN (where the built targets are).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mkdir -p "${FUZZ_WORK:?}" && cd "$FUZZ_WORK" && pwd)
bin=${FUZZ_BIN:?}
case $bin in /*) ;; *) bin=$root/$bin ;; esac
read -r -a targets <<<"${FUZZ_TARGETS:?}"
read -r -a extra <<<"${FUZZ_ARGS:-}"

run() {
  local seconds=${FUZZ_SECONDS:?} seed=${FUZZ_SEED:?}
  local summary=() total=0 findings=0 started=$SECONDS
  for t in "${targets[@]}"; do
    [ -x "$bin/$t" ] || { echo "no fuzz target $t in $bin" >&2; exit 1; }
    local corpus=$work/corpus/$t artifacts=$work/artifacts/$t logs=$work/logs/$t
    mkdir -p "$corpus" "$artifacts" "$logs"
    local before
    before=$(ls "$artifacts" | sort)
    echo "== $t: ${seconds}s, seed $seed, corpus $(ls "$corpus" | wc -l) + $(ls "$root/fuzz/corpus/$t" | wc -l) committed"
    # -jobs=1: one job, its output in fuzz-0.log of the job's folder (printed when it ends).
    # The working corpus comes first (new inputs go there), the committed one is read too.
    (cd "$logs" && rm -f fuzz-0.log && "$bin/$t" "$corpus" "$root/fuzz/corpus/$t" \
      -jobs=1 -seed="$seed" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 -dict="$root/fuzz/dict/tokenmeter.dict" \
      -artifact_prefix="$artifacts/" "${extra[@]}" >/dev/null 2>&1) || true
    local log=$logs/fuzz-0.log
    grep -E '^#[0-9]+.*(INITED|DONE)|^Done [0-9]+ runs|panicked at|^SUMMARY' "$log" | head -n 20 || true
    local execs rate
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    execs=${execs:-0}
    total=$((total + execs))
    local new
    new=$(comm -13 <(echo "$before") <(ls "$artifacts" | sort) | grep -v '^$' || true)
    if [ -n "$new" ]; then
      findings=$((findings + $(echo "$new" | wc -l)))
      for f in $new; do
        echo "   FINDING $t: $artifacts/$f"
        grep -A 2 'panicked at' "$log" | head -n 3 | cut -c1-400 | sed 's/^/     /' || true
      done
    fi
    summary+=("$(printf '%-26s %12s execs %7s exec/s  corpus %5s  findings %s' "$t" "$execs" \
      "${rate:-0}" "$(ls "$corpus" | wc -l)" "$(echo -n "$new" | grep -c . || true)")")
  done
  echo
  echo "fuzz campaign: seed $seed, ${seconds}s per target, $((SECONDS - started))s in all"
  printf '  %s\n' "${summary[@]}"
  echo "  total                      $(printf '%12s' "$total") execs"
  if [ "$findings" -gt 0 ]; then
    echo "$findings finding(s): reproducers under $work/artifacts/<target>/;" \
      "keep each in fuzz/findings/<target>/ (cargo test replays them)"
    exit 1
  fi
}

minimise() {
  local max=${FUZZ_CORPUS_MAX:-30}
  for t in "${targets[@]}"; do
    local committed=$root/fuzz/corpus/$t merged=$work/merged/$t
    rm -rf "$merged" && mkdir -p "$merged" "$work/corpus/$t"
    # Inputs that crash are left out of a merge; what is left keeps the coverage of both.
    (cd "$work" && "$bin/$t" -merge=1 -set_cover_merge=1 -use_counters=0 -timeout=10 \
      -dict="$root/fuzz/dict/tokenmeter.dict" "$merged" "$committed" "$work/corpus/$t" \
      >"$work/merged/$t.log" 2>&1) || { tail -n 5 "$work/merged/$t.log"; exit 1; }
    # The committed corpus stays small: its named inputs (the seeds and regressions, kept
    # as they are) and at most FUZZ_CORPUS_MAX of the merged ones, picked evenly from the
    # smallest to the largest; the whole merged corpus stays in the working corpus.
    find "$committed" -maxdepth 1 -type f -regextype posix-extended -regex '.*/[0-9a-f]{40}' -delete
    ls -S -r "$merged" | grep -E '^[0-9a-f]{40}$' \
      | awk -v n="$max" '{ a[NR] = $0 } END {
          if (NR <= n) { for (i = 1; i <= NR; i++) print a[i] }
          else { for (i = 0; i < n; i++) print a[int(i * (NR - 1) / (n - 1)) + 1] } }' \
      | while read -r f; do cmp -s "$merged/$f" "$committed/$f" 2>/dev/null || cp "$merged/$f" "$committed/$f"; done
    echo "$t: $(ls "$merged" | wc -l) inputs merged, $(ls "$committed" | wc -l) in fuzz/corpus/$t"
  done
}

case ${1:-} in
  run) run ;;
  minimise) minimise ;;
  *) echo "usage: $0 run|minimise" >&2; exit 2 ;;
esac
