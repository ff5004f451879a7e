#!/usr/bin/env bash
# Issue 20's depth measurement on one GPU: for each depth rule named, the proxies of
# examples/depth_sweep.yaml (widths 128 and 256, depths 2 and 4) and the check sweep of
# examples/depth_check.yaml (width 256, depth 12) under that rule, all in one database:
#   SWEEPER_DB_URL=sqlite:///benchmarks/results/depth/depth.db \
#       bash benchmarks/depth_transfer.sh completep sqrt none
# then anywhere: python -m benchmarks.depth_report (it computes the transfers).
# Widths stop at 256 so that the check isolates depth: its width is a proxy width.
# The report needs both sweeps of every rule it reads (benchmarks/depth_report.py RULES).
set -uo pipefail
cd "$(dirname "$0")/.."
specs=$(mktemp -d)
for rule in "$@"; do
    sed "s/depth_rule: completep/depth_rule: $rule/; s/name: depth-completep/name: depth-$rule/;
         s/widths: \[128, 256, 512\]/widths: [128, 256]/" examples/depth_sweep.yaml \
        > "$specs/proxies-$rule.yaml"
    sed "s/depth_rule: completep/depth_rule: $rule/; s/check-completep/check-$rule/" \
        examples/depth_check.yaml > "$specs/check-$rule.yaml"
    for part in proxies check; do
        start=$SECONDS
        python3 -m sweeper sweep start "$specs/$part-$rule.yaml" --wait
        echo "== $rule $part: rc=$?, $((SECONDS - start)) s"
    done
done
