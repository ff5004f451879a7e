#!/usr/bin/env bash
# The GPU side of the kernels' work, for one call of the device machine (see docs/KERNELS.md).
#   bash benchmarks/run_gpu.sh STAGE...   stages: env tests gemm sweep mlp norm parity graphs
#                                          profile steady startup warm-up proxy-sweep
#                                          train-throughput
# LIMIT_<stage>=seconds stops a stage early (the device call has a hard limit); its JSON,
# written as it goes, is still copied.
# Wheels in .whl/ (pydantic for the models' config, torchao for the MLP baseline) are
# installed first; logs and JSON results are copied to $OUT when it is set.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:-}"
OUT="${OUT:-/tmp/kernels-out}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
status=0
t() {  # t STAGE CMD...: run CMD under the stage's time limit
    local limit="LIMIT_$1"
    shift
    timeout "${!limit:-3000}" "$@"
}
for stage in "$@"; do
    start=$SECONDS
    marker=$(mktemp) && touch "$marker"
    case "$stage" in
        env) nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu \
                 --format=csv
             python3 -c "import torch, triton; print(torch.__version__, triton.__version__)" ;;
        tests) t tests python3 -m pytest -q --tb=short -p no:logging --durations=8 tests/kernels 2>&1 | tee "$OUT/pytest.log" ;;
        gemm) t gemm python3 -m benchmarks.bench_gemm --backward 2>&1 | tee "$OUT/gemm.log" ;;
        sweep) t sweep python3 -m benchmarks.bench_gemm --sweep --out gemm_sweep 2>&1 | tee "$OUT/sweep.log" ;;
        mlp) t mlp python3 -m benchmarks.bench_mlp ${MLP_ARGS:-} 2>&1 | tee "$OUT/mlp.log" ;;
        norm) t norm python3 -m benchmarks.bench_norm ${NORM_ARGS:-} 2>&1 | tee "$OUT/norm.log" ;;
        parity) t parity python3 -m benchmarks.fp8_training_parity --data .devdata/shakespeare.txt \
                    2>&1 | tee "$OUT/parity.log" ;;
        graphs) t graphs python3 -m pytest -q --tb=short -p no:logging tests/test_cuda_graphs_gpu.py \
                    2>&1 | tee "$OUT/graphs.log" ;;
        profile) t profile python3 -m benchmarks.profile_proxy_step --data .devdata/shakespeare.txt \
                    2>&1 | tee "$OUT/profile.log" ;;
        steady|startup|warm-up|proxy-sweep)
            t "${stage//-/_}" python3 -m benchmarks.proxy_speed "${stage#proxy-}" \
                --data .devdata/shakespeare.txt --log "$OUT/proxy_speed.jsonl" 2>&1 \
                | tee -a "$OUT/proxy_speed.log" ;;
        train-throughput) t train_throughput python3 -m benchmarks.train_throughput ${TT_ARGS:-} \
                --log "$OUT/train_throughput.jsonl" 2>&1 | tee -a "$OUT/train_throughput.log" ;;
        *) echo "unknown stage $stage"; exit 2 ;;
    esac
    rc=${PIPESTATUS[0]}
    [ "$rc" -ne 0 ] && status=$rc
    echo "== stage $stage: rc=$rc, $((SECONDS - start)) s"
    # only what this stage wrote: at most 8 files come back from a device call
    find benchmarks/results -name '*.json' -newer "$marker" -exec cp {} "$OUT/" \;
done
exit $status
