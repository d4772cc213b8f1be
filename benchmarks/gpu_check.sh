#!/usr/bin/env bash
# One command for a lent GPU (one H100 or H200, a few minutes): installs the working tree, then
#   1. protect_speed.py on a ViT-B/32-sized CLIP at 224 px in bf16: HotFlip and 8-PGD-step seconds
#      per batch and their model FLOP utilisation against the card's dense bf16 peak (target: PGD
#      MFU >= 40%);
#   2. gpu_throughput.py --stages protect: rows per second of a 2,000-pair protect end to end (the
#      default method, bf16, a short schedule stated in the output);
#   3. gpu_throughput.py --stages victim: pairs per second of train_victim on the same model.
# Each stage runs under `timeout`, within GPU_CHECK_BUDGET_S in all (default 450 s: an 8-minute
# slot less start-up). Writes $OUT (else benchmarks/results/tmp/gpu_check/): gpu_check.json, one log
# and one JSON per stage, nvidia-smi's view; prints a summary. Exit 0 when every figure is there.
#
#   bash benchmarks/gpu_check.sh                                   # on the GPU machine
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_MODEL=tiny GPU_CHECK_ROWS=32 GPU_CHECK_PEAK_TFLOPS=1 \
#       bash benchmarks/gpu_check.sh                               # the test's run on a CPU (~30 s)
#
# Settings (environment):
#   GPU_CHECK_DEVICE       cuda (default) or cpu
#   GPU_CHECK_MODEL        vit-b32 (default: 224 px) or tiny (32 px)
#   GPU_CHECK_ROWS         rows of the protect run and of the victim's epochs (default 2000)
#   GPU_CHECK_PRECISION    bf16 (default on cuda) or no (default on cpu)
#   GPU_CHECK_CARD         the card's name (default: nvidia-smi's, else torch.cuda.get_device_name())
#   GPU_CHECK_PEAK_TFLOPS  the dense bf16 peak to measure MFU against (default: from the card's name)
#   GPU_CHECK_BUDGET_S     seconds for the whole script (default 450)
#   GPU_CHECK_INSTALL      1: pip install -e . first (default on cuda), 0: use what is installed
#   GPU_CHECK_SPEED_ARGS   extra arguments for protect_speed.py (e.g. "--repeats 1")
#   GPU_CHECK_THROUGHPUT_ARGS  extra arguments for gpu_throughput.py (e.g. "--rounds 1 --batch-size 64")
set -euo pipefail
export LC_ALL=C OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd "$(dirname "$0")/.."

START=$EPOCHSECONDS
DEVICE=${GPU_CHECK_DEVICE:-cuda}
MODEL=${GPU_CHECK_MODEL:-vit-b32}
ROWS=${GPU_CHECK_ROWS:-2000}
BUDGET=${GPU_CHECK_BUDGET_S:-450}
OUT_DIR=${OUT:-benchmarks/results/tmp/gpu_check}
RESERVE=15 # seconds kept for the report
case "$DEVICE" in
    cuda) PRECISION=${GPU_CHECK_PRECISION:-bf16} INSTALL=${GPU_CHECK_INSTALL:-1} ;;
    cpu) PRECISION=${GPU_CHECK_PRECISION:-no} INSTALL=${GPU_CHECK_INSTALL:-0} ;;
    *) echo "gpu_check: GPU_CHECK_DEVICE=$DEVICE: use cuda or cpu" >&2 && exit 2 ;;
esac
case "$MODEL" in
    vit-b32) IMAGE_SIZE=224 ;;
    tiny) IMAGE_SIZE=32 ;;
    *) echo "gpu_check: GPU_CHECK_MODEL=$MODEL: use vit-b32 or tiny" >&2 && exit 2 ;;
esac
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/{stages.tsv,gpu_check.json,protect_speed.json,protect.json,victim.json,nvidia-smi.csv}

# run_stage NAME CAP_SECONDS COMMAND...: COMMAND under `timeout`, for at most CAP_SECONDS and what the
# budget leaves; its output printed and kept in NAME.log; one line in stages.tsv
# (name, ok/timeout/failed/skipped, exit status, seconds, limit). Never stops the script.
run_stage() {
    local name=$1 cap=$2 left limit started rc=0 status seconds
    shift 2
    left=$((BUDGET - (EPOCHSECONDS - START) - RESERVE))
    limit=$((cap < left ? cap : left))
    if ((limit < 10)); then
        echo "== $name: skipped, ${left} s of the budget left"
        printf '%s\tskipped\t0\t0\t%s\n' "$name" "$limit" >>"$OUT_DIR/stages.tsv"
        return 0
    fi
    echo "== $name (limit ${limit} s): $*"
    started=$EPOCHREALTIME
    timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log" || rc=${PIPESTATUS[0]}
    seconds=$(awk "BEGIN { printf \"%.1f\", $EPOCHREALTIME - $started }")
    case $rc in
        0) status=ok ;;
        124 | 137) status=timeout ;;
        *) status=failed ;;
    esac
    echo "== $name: $status in ${seconds} s"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$seconds" "$limit" >>"$OUT_DIR/stages.tsv"
}

echo "== gpu_check: device $DEVICE, model $MODEL ($IMAGE_SIZE px), $ROWS rows, $PRECISION, budget $BUDGET s, output $OUT_DIR"
if command -v nvidia-smi >/dev/null; then
    timeout 20 nvidia-smi || true
    timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit \
        --format=csv >"$OUT_DIR/nvidia-smi.csv" || true
else
    echo "nvidia-smi: not found"
fi

# The peak first: an unknown card stops the script before any device time is spent.
CARD=${GPU_CHECK_CARD:-}
if [[ -z $CARD && $DEVICE == cuda ]]; then
    CARD=$(timeout 20 nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || true)
    [[ -n $CARD ]] || CARD=$(timeout 60 python -c "import torch; print(torch.cuda.get_device_name())" 2>/dev/null || true)
fi
if [[ -n ${GPU_CHECK_PEAK_TFLOPS:-} ]]; then
    PEAK=$GPU_CHECK_PEAK_TFLOPS PEAK_SOURCE=GPU_CHECK_PEAK_TFLOPS
else
    PEAK=$(python benchmarks/gpu_check_report.py peak "$CARD") PEAK_SOURCE="table, card ${CARD}"
fi
echo "== card: ${CARD:-none}; dense bf16 peak $PEAK TFLOP/s ($PEAK_SOURCE)"

if [[ $INSTALL == 1 ]]; then
    # Offline, pip cannot fetch the build backend for an isolated build: then build with the installed one.
    run_stage install 150 bash -c 'python -m pip install -q -e . ||
        python -m pip install -q --no-build-isolation --no-deps -e .'
fi
# shellcheck disable=SC2086  # GPU_CHECK_*_ARGS are lists of words
run_stage protect_speed 150 python benchmarks/protect_speed.py --sizes "$MODEL" --device "$DEVICE" \
    --mixed-precision "$PRECISION" --peak-tflops "$PEAK" --json "$OUT_DIR/protect_speed.json" ${GPU_CHECK_SPEED_ARGS:-}
if grep -q "unrecognized arguments:.*--\(json\|peak-tflops\)" "$OUT_DIR/protect_speed.log" 2>/dev/null; then
    echo "gpu_check: benchmarks/protect_speed.py has no --json PATH / --peak-tflops X options yet (the MFU" \
        "figures come from them); update the working tree to a commit that has them." >&2
    exit 2
fi
# shellcheck disable=SC2086
THROUGHPUT=(python benchmarks/gpu_throughput.py --device "$DEVICE" --model "$MODEL" --rows "$ROWS"
    --image-size "$IMAGE_SIZE" --mixed-precision "$PRECISION" ${GPU_CHECK_THROUGHPUT_ARGS:-})
run_stage protect 240 "${THROUGHPUT[@]}" --stages protect --json "$OUT_DIR/protect.json"
run_stage victim 120 "${THROUGHPUT[@]}" --stages victim --json "$OUT_DIR/victim.json"

python benchmarks/gpu_check_report.py report "$OUT_DIR" --card "$CARD" --peak-tflops "$PEAK" \
    --peak-source "$PEAK_SOURCE" --device "$DEVICE" --model "$MODEL" --mixed-precision "$PRECISION" \
    --rows "$ROWS" --budget "$BUDGET" --total "$((EPOCHSECONDS - START))"
