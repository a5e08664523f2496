#!/usr/bin/env bash
# Run make targets in order, stop at the first that fails, and print each stage's time at the
# end (also after a failure), so every `make test` shows where its budget went.
set -uo pipefail
declare -a rows=()
status=0
began=$SECONDS
for stage in "$@"; do
    start=$SECONDS
    make --no-print-directory "$stage"
    status=$?
    rows+=("$(printf '%-10s %5d s  %s' "$stage" $((SECONDS - start)) "$([ $status -eq 0 ] && echo ok || echo FAILED)")")
    [ $status -eq 0 ] || break
done
echo
echo "stage       time"
printf '%s\n' "${rows[@]}"
printf '%-10s %5d s\n' total $((SECONDS - began))
exit $status
