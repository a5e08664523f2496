#!/usr/bin/env bash
# Run make targets in order, stop at the first stage that fails, and print each target's time
# at the end (also after a failure), so every `make test` shows where its budget went.
# A stage "a+b+c" runs those targets at once, each to .cache/stage-<target>.log: the last one
# (the longest, the end-to-end lanes in `make test`) also streams to this terminal, so a CI log
# shows its heartbeat; each other one is printed whole as it ends. The suite is CPU-bound on
# 2 cores: a barrier between stages would leave a core idle while Molecule waits on apt and
# systemd in its containers, so lint, the unit tests and Molecule run beside the lanes.
set -uo pipefail
declare -a rows=()
status=0
began=$SECONDS
mkdir -p .cache

row() {  # target, seconds, status
    rows+=("$(printf '%-10s %5d s  %s' "$1" "$2" "$([ "$3" -eq 0 ] && echo ok || echo FAILED)")")
}

for stage in "$@"; do
    if [[ $stage != *+* ]]; then
        start=$SECONDS
        make --no-print-directory "$stage"
        status=$?
        row "$stage" $((SECONDS - start)) $status
    else
        IFS=+ read -ra targets <<<"$stage"
        start=$SECONDS
        declare -A pids=()
        last=${targets[-1]}
        for target in "${targets[@]}"; do
            rm -f ".cache/stage-$target.result"  # a subshell that dies never reads as an old success
            if [[ $target == "$last" ]]; then
                ( t0=$SECONDS; make --no-print-directory "$target" 2>&1 | tee ".cache/stage-$target.log"
                  rc=${PIPESTATUS[0]}; echo $((SECONDS - t0)) "$rc" >".cache/stage-$target.result" ) &
            else
                ( t0=$SECONDS; make --no-print-directory "$target" >".cache/stage-$target.log" 2>&1; rc=$?
                  echo $((SECONDS - t0)) $rc >".cache/stage-$target.result" ) &
            fi
            pids[$target]=$!
        done
        for target in "${targets[@]}"; do
            wait "${pids[$target]}"
            if [[ $target != "$last" ]]; then
                echo "==================== $target ===================="
                cat ".cache/stage-$target.log"
            fi
            read -r took rc <".cache/stage-$target.result"
            row "$target" "$took" "$rc"
            [ "$rc" -eq 0 ] || status=$rc
        done
        unset pids
        rows+=("$(printf '%-10s %5d s  (%s at once)' "" $((SECONDS - start)) "${targets[*]}")")
    fi
    [ $status -eq 0 ] || break
done
echo
echo "stage       time"
printf '%s\n' "${rows[@]}"
printf '%-10s %5d s\n' total $((SECONDS - began))
exit $status
