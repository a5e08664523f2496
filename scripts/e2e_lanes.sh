#!/usr/bin/env bash
# The end-to-end tests in two lanes at once, each its own pytest session, split by
# scripts/e2e_plan.py from the module times measured in the last full run
# (tests/e2e/module_times.json): the modules that set SHARED_SERVER = True (one deployed Debian 12
# sandbox, in turn) stay together in one lane; the others go longest first to the lane with less
# time so far. Both cores are busy nearly all the time during the lanes (the CPU use is printed at
# the end), so two lanes suffice and only less CPU makes the suite shorter (docs/testing.md).
# Lanes share nothing but the wheelhouse and image caches, which are written atomically.
# E2E_LANES=1 runs everything in one session, in the usual order. Extra arguments go to pytest.
# Each lane's output goes to .cache/e2e-<lane>.log and is printed whole when both are done.
set -u
cd "$(dirname "$0")/.."
mkdir -p .cache

mapfile -t modules < <(ls tests/e2e/test_*.py)
# Several servers behind HAProxy (about 15 minutes of its own on 2 cores with warm caches) does
# not fit the suite's 50-minute budget yet: `make e2e-scale-out` (or E2E_SCALE_OUT=1) runs it.
if [[ "${E2E_SCALE_OUT:-0}" != 1 ]]; then
    mapfile -t modules < <(printf '%s\n' "${modules[@]}" | grep -v '/test_scale_out[.]py$')
fi
mapfile -t plan < <(python scripts/e2e_plan.py "${modules[@]}")
read -ra lane1 <<<"${plan[0]}"
read -ra lane2 <<<"${plan[1]:-}"

run_lane() {  # name, modules...
    local name=$1; shift
    pytest -q --durations=15 --junitxml=".cache/e2e-junit-$name.xml" "$@" "${PYTEST_EXTRA[@]}" \
        >".cache/e2e-$name.log" 2>&1
}

done_in() {  # tests finished so far in a lane: pytest -q's progress characters
    grep -Eo '^[.FEsx]+' ".cache/e2e-$1.log" 2>/dev/null | tr -d '\n' | wc -c
}

cpu_ticks() {  # busy and all CPU ticks since boot, from /proc/stat
    awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat
}

PYTEST_EXTRA=("$@")
read -r busy0 all0 < <(cpu_ticks)
rm -f .cache/e2e-junit-*.xml .cache/e2e-*.log
start=$SECONDS
if [[ "${E2E_LANES:-2}" == 1 ]]; then
    run_lane all "${modules[@]}"
    status=$?
    cat .cache/e2e-all.log
else
    echo "e2e lane 1: ${lane1[*]}"
    echo "e2e lane 2: ${lane2[*]}"
    run_lane 1 "${lane1[@]}" & lane1_pid=$!
    run_lane 2 "${lane2[@]}" & lane2_pid=$!
    # A heartbeat, so a CI log shows the run is alive.
    while kill -0 "$lane1_pid" 2>/dev/null || kill -0 "$lane2_pid" 2>/dev/null; do
        sleep 60
        printf 'e2e: %4d s; tests done: lane 1 %d, lane 2 %d\n' $((SECONDS - start)) \
            "$(done_in 1)" "$(done_in 2)"
    done
    wait "$lane1_pid"; lane1_status=$?
    wait "$lane2_pid"; lane2_status=$?
    for name in 1 2; do
        echo "==================== lane $name ===================="
        cat ".cache/e2e-$name.log"
    done
    status=$(( lane1_status > lane2_status ? lane1_status : lane2_status ))
fi
read -r busy1 all1 < <(cpu_ticks)
echo "e2e wall time: $((SECONDS - start)) s; CPU $(( (busy1 - busy0) / $(getconf CLK_TCK) )) CPU-s," \
    "$(( 100 * (busy1 - busy0) / (all1 - all0) ))% of $(nproc) cores busy"
python scripts/test_times.py .cache/e2e-junit-*.xml || true
exit "$status"
