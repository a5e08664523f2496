#!/usr/bin/env bash
# The end-to-end tests in two lanes at once, each its own pytest session:
#   shared  the modules that set SHARED_SERVER = True (one deployed Debian 12 sandbox, in turn),
#           and those that set E2E_LANE = "shared" to even out the lanes' times
#   own     every other module (each starts its own sandboxes)
# A deploy keeps about 1.5 of 2 cores busy and many steps wait on SSH, systemd timers or apt,
# so two lanes finish the suite in about two thirds of the time of one (docs/testing.md).
# Lanes share nothing but the wheelhouse and image caches, which are written atomically.
# E2E_LANES=1 runs everything in one session, in the usual order. Extra arguments go to pytest.
# tests/e2e/test_scale_out.py runs only with E2E_SCALE_OUT=1 (make e2e-scale-out).
# Each lane's output goes to .cache/e2e-<lane>.log and is printed whole when both are done.
set -u
cd "$(dirname "$0")/.."
mkdir -p .cache

mapfile -t modules < <(ls tests/e2e/test_*.py)
shared=() own=()
for m in "${modules[@]}"; do
    # Several servers behind HAProxy: about 15 minutes of its own on 2 cores, beyond the suite's
    # 50-minute budget; `make e2e-scale-out` (or E2E_SCALE_OUT=1) runs it.
    if [[ "$m" == */test_scale_out.py && "${E2E_SCALE_OUT:-0}" != 1 ]]; then continue; fi
    if grep -qE '^(SHARED_SERVER = True|E2E_LANE = "shared")' "$m"; then shared+=("$m"); else own+=("$m"); fi
done

run_lane() {  # name, modules...
    local name=$1; shift
    pytest -q --durations=15 --junitxml=".cache/e2e-junit-$name.xml" "$@" "${PYTEST_EXTRA[@]}" \
        >".cache/e2e-$name.log" 2>&1
}

done_in() {  # tests finished so far in a lane: pytest -q's progress characters
    grep -Eo '^[.FEsx]+' ".cache/e2e-$1.log" 2>/dev/null | tr -d '\n' | wc -c
}

PYTEST_EXTRA=("$@")
rm -f .cache/e2e-junit-*.xml .cache/e2e-*.log
start=$SECONDS
if [[ "${E2E_LANES:-2}" == 1 ]]; then
    run_lane all "${shared[@]}" "${own[@]}"
    status=$?
    cat .cache/e2e-all.log
else
    run_lane shared "${shared[@]}" & shared_pid=$!
    run_lane own "${own[@]}" & own_pid=$!
    # A heartbeat, so a CI log shows the run is alive.
    while kill -0 "$shared_pid" 2>/dev/null || kill -0 "$own_pid" 2>/dev/null; do
        sleep 60
        printf 'e2e: %4d s; tests done: shared lane %d, own lane %d\n' $((SECONDS - start)) \
            "$(done_in shared)" "$(done_in own)"
    done
    wait "$shared_pid"; shared_status=$?
    wait "$own_pid"; own_status=$?
    for name in shared own; do
        echo "==================== lane $name ===================="
        cat ".cache/e2e-$name.log"
    done
    status=$(( shared_status > own_status ? shared_status : own_status ))
fi
echo "e2e wall time: $((SECONDS - start)) s"
python scripts/test_times.py .cache/e2e-junit-*.xml || true
exit "$status"
