#!/usr/bin/env bash
# The GPU measurements of benchmarks/RESULTS.md in one call, for a short lease of a GPU machine:
#   1. training throughput of every learner with ResNet-18 (CIFAR stem, 32 px, two views, batch 512) on random
#      images in CIFAR-10's format: bf16 autocast (with a profile of five more steps) and fp32, and bf16 with
#      torch.compile;
#   2. the same for the Fashion-MNIST CPU configs (small CNN, 28 px) on the GPU;
#   3. the augmentations and the losses (against lightly, when it is installed) on the GPU;
#   4. Fashion-MNIST quality within a time budget: CC runs side by side on the one GPU (three by default).
# Fashion-MNIST must be findable (DEEPCLUST_DATA or the Debian path). Everything lands in OUT_DIR: log.txt,
# speed.tgz (the JSON rows) and quality.tgz (the run directories without their checkpoints).
#
#   benchmarks/gpu_check.sh OUT_DIR [TOTAL_S]
#
# It ends within TOTAL_S seconds (default 560): at most 200 s of throughput steps (PHASE1_S), then the quality
# runs get the rest, less 150 s for their start-up, one final evaluation each and the packing.
# DEVICE (default auto), STEPS, WINDOWS, WARMUP, CIFAR_N and EXTRA (overrides that come last in the throughput
# runs, e.g. "optim.batch_size=32 train.precision=32") shrink it for a smoke run on the CPU. RUNS picks the
# quality runs (default "cpu-config resnet18-lr1e-3 resnet18-lr3e-4"; RUNS=none for none); PHASE1_S=0 skips the
# throughput steps, so PHASE1_S=0 RUNS=cpu-config gives one run the GPU alone for about TOTAL_S − 150 s.
set -u
out=${1:?usage: benchmarks/gpu_check.sh OUT_DIR [TOTAL_S]}
total_s=${2:-560}
device=${DEVICE:-auto}
steps=${STEPS:-20}
windows=${WINDOWS:-3}
warmup=${WARMUP:-10}
cifar_n=${CIFAR_N:-60000}
read -ra extra <<<"${EXTRA:-}"
read -ra runs <<<"${RUNS:-cpu-config resnet18-lr1e-3 resnet18-lr3e-4}"
export PYTHONUNBUFFERED=1
mkdir -p "$out/speed" "$out/quality"
out=$(cd "$out" && pwd)
exec > >(tee -a "$out/log.txt") 2>&1
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }

stamp "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
python3 -c "import torch, kornia; print('torch', torch.__version__, 'kornia', kornia.__version__, \
'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
nproc
torch_device=$device
if [ "$device" = auto ]; then
    torch_device=$(python3 -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
fi

# the throughput steps share PHASE1_S seconds (default 200) from the start, in order of importance, so the
# quality runs always get their turn; a step that would start with under 20 s left is skipped
phase1_s=${PHASE1_S:-200}
limited() {  # limited NAME TIMEOUT_S COMMAND...
    local name=$1 limit=$2 left=$((phase1_s - SECONDS))
    shift 2
    if [ "$left" -lt 20 ]; then
        stamp "$name: skipped, the throughput steps are out of time"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    stamp "$name (at most $limit s)"
    timeout "$limit" "$@" || echo "$name: exit $?"
}
speed() {  # speed NAME TIMEOUT_S ARGS...: one train_speed.py sweep
    local name=$1 limit=$2
    shift 2
    limited "speed $name" "$limit" python3 benchmarks/train_speed.py --device "$device" --steps "$steps" \
        --windows "$windows" --warmup "$warmup" --out "$out/speed/$name.json" "$@" "${extra[@]}"
}
resnet=(model.backbone=resnet18 model.stem=cifar augment.image_size=null optim.batch_size=512)
cifar=(--dataset cifar10 --random-cifar10 "$cifar_n")
speed resnet18-bf16 100 --methods cc simclr byol swav --profile 5 "${cifar[@]}" "${resnet[@]}" train.precision=bf16-mixed
speed resnet18-fp32 40 --methods cc "${cifar[@]}" "${resnet[@]}" train.precision=32
speed resnet18-bf16-compile 150 --methods cc "${cifar[@]}" "${resnet[@]}" train.precision=bf16-mixed train.compile=true
speed fmnist-cpu-configs 60 --methods cc simclr byol swav --profile 5 --dataset fashion-mnist
limited augmentations 40 python3 benchmarks/augment_speed.py --device "$torch_device" --repeats 10
limited losses 40 python3 benchmarks/loss_speed.py --device "$torch_device" --repeats 100 \
    --out "$out/speed/loss_speed.json"
tar -czf "$out/speed.tgz" -C "$out" speed

minutes=$(python3 -c "print(round(max(0.5, ($total_s - $SECONDS - 150) / 60), 2))")
stamp "quality: CC runs ${runs[*]} of $minutes minutes side by side"
quality() {  # quality NAME OVERRIDES...: one fmnist_budget.py run in the background, if NAME is in RUNS
    local name=$1
    shift
    [[ " ${runs[*]} " == *" $name "* ]] || return 0
    OMP_NUM_THREADS=4 timeout $((total_s - SECONDS - 10)) python3 benchmarks/fmnist_budget.py --minutes "$minutes" \
        --methods cc --out "$out/quality/$name" train.eval_every_epochs=1000 train.progress=false \
        device="$device" "$@" >"$out/quality/$name.log" 2>&1 || echo "quality $name: exit $?" &
    jobs_started+=($!)
}
jobs_started=()
# the CPU config (small CNN, five heads); then ResNet-18 at the native 28 px with the config's rate, and with CC's
quality cpu-config
quality resnet18-lr1e-3 model.backbone=resnet18 model.stem=cifar model.layers=null
quality resnet18-lr3e-4 model.backbone=resnet18 model.stem=cifar model.layers=null optim.lr=0.0003
if [ ${#jobs_started[@]} -eq 0 ]; then
    echo "RUNS names no quality run: ${runs[*]}"
else
    wait "${jobs_started[@]}"  # a bare wait would also wait for the log's tee, which never ends
fi
for log in "$out"/quality/*.log; do
    [ -e "$log" ] || continue
    echo "-- $log"
    tail -n 25 "$log"
done
tar -czf "$out/quality.tgz" --exclude=checkpoints -C "$out" quality
stamp "done"
