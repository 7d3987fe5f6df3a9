#!/usr/bin/env bash
# GPU acceptance of the mimic-sd21 recipe: one prepared script, <= 8 minutes on one H200, PASS/FAIL per check.
#
#   bash bench/gpu_acceptance.sh             # on a GPU machine (run from the repo root)
#   bash bench/gpu_acceptance.sh --cpu-dry   # the same checks at 32 px on CPU, bf16 autocast kept on (SYNTH_CPU_AUTOCAST=1)
#
# Checks: (1) the recipe (configs/finetune/mimic-sd21.yaml flags: bf16, text encoder trained, EMA, snr_gamma,
# gradient checkpointing, accumulation, checkpoints_total_limit, cache_latents false) trains, validates and
# exports an fp32 pipeline from a tiny random-weight SD-2.1-base-layout folder (tests/sd_folders.py) at 256 px;
# (2) xformers used, or exactly one fallback warning; (3) kill -9 after step 4, a plain re-run resumes and ends
# with the uninterrupted run's losses (exact on CPU; GPU kernels are not bit-deterministic, so within 2 %);
# (4) a source folder saved in fp16 trains (latents encoded on the fly, cache_latents false) with finite losses
# and exports fp32; (5) synth generate at fp16 /
# bf16 / fp32; (6) 2-process NCCL finetune when >= 2 GPUs; (7) an ablation re-run with every stage cached
# (tiny demo-like ablation run twice; skipped when less than 4 minutes of the budget are left).
# Work goes to $WORK (default: a fresh temp folder). Exit status = number of FAILs.
set -u
cd "$(dirname "$0")/.."
REPO=$(pwd)
MODE=gpu
[[ "${1:-}" == "--cpu-dry" ]] && MODE=cpu
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
WORK=${WORK:-$(mktemp -d /tmp/gpu_acceptance.XXXXXX)}
mkdir -p "$WORK"
START=$(date +%s)
FAILS=0
RESULTS=()

if [[ $MODE == cpu ]]; then
  export SYNTH_CPU_AUTOCAST=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
  RES=32; BATCH=2; STEPS=6; GEN_PRECISIONS="bf16 fp32"; TOL=0
else
  RES=256; BATCH=4; STEPS=6; GEN_PRECISIONS="fp16 bf16 fp32"; TOL=0.02
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
NGPU=$(python -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)

# install only if the package (with its test helpers' deps) is not importable yet
python -c "import synth, pytest, diffusers, transformers, accelerate" 2>/dev/null || pip install -q -e '.[dev]' || exit 99

result() {  # NAME STATUS DETAIL
  RESULTS+=("$(printf '%-28s %s  %s' "$1" "$2" "$3")")
  printf '%-28s %s  %s\n' "$1" "$2" "$3"
  [[ $2 == FAIL ]] && FAILS=$((FAILS + 1))
  return 0
}
elapsed() { echo $(( $(date +%s) - START )); }

# ---------------------------------------------------------------- inputs: tiny SD folders + manifest
python - "$WORK" <<'EOF' || { echo "FAIL: could not build the tiny SD folders"; exit 98; }
import sys, torch
from pathlib import Path
sys.path.insert(0, "tests")
from sd_folders import build_sd_folder
from tiny_pipeline import write_tiny_manifest
work = Path(sys.argv[1])
write_tiny_manifest(work / "data")
build_sd_folder(work / "sd21-base", "sd21-base")
build_sd_folder(work / "sd21-base-fp16", "sd21-base", dtype=torch.float16)
EOF
MANIFEST="$WORK/data/manifest.csv"
RECIPE=(--config configs/finetune/mimic-sd21.yaml --train_manifest "$MANIFEST" --resolution $RES --train_batch_size $BATCH
        --max_train_steps $STEPS --checkpointing_steps 2 --checkpoints_total_limit 2 --lr_warmup_steps 1 --logging_steps 1
        --num_validation_images 1 --validation_inference_steps 4 --dataloader_num_workers 2 --learning_rate 1e-4)

check_export() {  # OUT -> prints "ok" or what is wrong
  python - "$1" <<'EOF'
import json, sys, math, csv
from pathlib import Path
from safetensors.torch import load_file
import torch
out = Path(sys.argv[1]); bad = []
meta = json.loads((out / "synth_meta.json").read_text()) if (out / "synth_meta.json").exists() else {}
if meta.get("mixed_precision") != "bf16": bad.append(f"mixed_precision={meta.get('mixed_precision')}")
for part, name in (("vae", "diffusion_pytorch_model"), ("unet", "diffusion_pytorch_model"), ("text_encoder", "model")):
    f = out / part / f"{name}.safetensors"
    dtypes = {str(t.dtype) for t in load_file(f).values()} if f.exists() else {"missing"}
    if dtypes != {"torch.float32"}: bad.append(f"{part}:{dtypes}")
losses = [float(r["loss"]) for r in csv.DictReader(open(out / "loss.csv"))] if (out / "loss.csv").exists() else []
if not losses or not all(math.isfinite(v) for v in losses): bad.append(f"losses {losses}")
if not list((out / "validation").glob("step-*.png")): bad.append("no validation image")
from diffusers import DiffusionPipeline
DiffusionPipeline.from_pretrained(out, local_files_only=True)
print("ok" if not bad else "; ".join(bad))
EOF
}

# ---------------------------------------------------------------- 1 + 2: the recipe in bf16; xformers
REF="$WORK/ref"
t0=$(date +%s)
python synth/finetune.py "${RECIPE[@]}" --pretrained_model_name_or_path "$WORK/sd21-base" --output_dir "$REF" >"$WORK/ref.log" 2>&1
rc=$?
if [[ $rc == 0 ]]; then
  verdict=$(check_export "$REF" 2>>"$WORK/ref.log")
  [[ $verdict == ok ]] && result "recipe bf16 train+val+export" PASS "$STEPS steps at $RES px in $(( $(date +%s) - t0 )) s, fp32 export" \
                       || result "recipe bf16 train+val+export" FAIL "$verdict"
else
  result "recipe bf16 train+val+export" FAIL "exit $rc: $(grep -E '^error:|Error' "$WORK/ref.log" | tail -1)"
fi
n_warn=$(grep -c "xformers unavailable" "$WORK/ref.log")
if python -c "import xformers" 2>/dev/null && [[ $n_warn == 0 && $MODE == gpu ]]; then
  result "xformers" PASS "xformers $(python -c 'import xformers; print(xformers.__version__)') used, no fallback warning"
elif [[ $n_warn == 1 ]]; then
  result "xformers" PASS "not usable here: exactly one fallback warning (SDPA)"
else
  result "xformers" FAIL "$n_warn fallback warnings"
fi

# ---------------------------------------------------------------- 3: kill -9 after step 4, plain re-run
KILLED="$WORK/killed"
python -c "import os, signal, sys; from synth.generator import train; \
train._after_step = lambda s: os.kill(os.getpid(), signal.SIGKILL) if s == 4 else None; \
from synth.finetune import main; sys.exit(main(sys.argv[1:]))" \
  "${RECIPE[@]}" --pretrained_model_name_or_path "$WORK/sd21-base" --output_dir "$KILLED" >"$WORK/killed.log" 2>&1
rc=$?
python synth/finetune.py "${RECIPE[@]}" --pretrained_model_name_or_path "$WORK/sd21-base" --output_dir "$KILLED" >"$WORK/resumed.log" 2>&1
rc2=$?
cmp=$(python - "$REF" "$KILLED" "$TOL" <<'EOF'
import csv, sys
a, b, tol = sys.argv[1], sys.argv[2], float(sys.argv[3])
la = [float(r["loss"]) for r in csv.DictReader(open(f"{a}/loss.csv"))]
lb = [float(r["loss"]) for r in csv.DictReader(open(f"{b}/loss.csv"))]
d = max((abs(x - y) / max(abs(x), 1e-8) for x, y in zip(la, lb)), default=float("inf"))
print(("ok" if len(la) == len(lb) and d <= tol else "differ") + f" max rel diff {d:.2e} over {len(lb)} steps")
EOF
)
if [[ $rc == 137 && $rc2 == 0 ]] && grep -q "^resuming from .*checkpoint-4" "$WORK/resumed.log" && [[ $cmp == ok* ]]; then
  result "kill -9 + resume" PASS "killed at step 4 (exit 137), re-run resumed from checkpoint-4, ${cmp#ok }"
else
  result "kill -9 + resume" FAIL "kill exit $rc, re-run exit $rc2, $(grep -c '^resuming from' "$WORK/resumed.log") resume line(s), $cmp"
fi

# ---------------------------------------------------------------- 4: source folder saved in fp16
FP16="$WORK/from-fp16"
python synth/finetune.py "${RECIPE[@]}" --pretrained_model_name_or_path "$WORK/sd21-base-fp16" --output_dir "$FP16" \
  --max_train_steps 4 --cache_latents false >"$WORK/fp16.log" 2>&1  # on-the-fly bf16 VAE encode, validation decode
rc=$?
verdict=$([[ $rc == 0 ]] && check_export "$FP16" 2>>"$WORK/fp16.log" || echo "exit $rc: $(grep -E '^error:' "$WORK/fp16.log" | tail -1)")
[[ $verdict == ok ]] && result "fp16 source folder" PASS "finite losses, fp32 export" || result "fp16 source folder" FAIL "$verdict"

# ---------------------------------------------------------------- 5: synth generate at each precision
for p in $GEN_PRECISIONS; do
  t0=$(date +%s)
  if synth generate --model "$REF" --class "Rib Fracture" --n 4 --batch-size 4 --steps 10 --precision $p \
       --out "$WORK/gen-$p" --no-progress >"$WORK/gen-$p.log" 2>&1 \
     && [[ $(find "$WORK/gen-$p" -name '*.png' | wc -l) == 4 ]]; then
    result "generate $p" PASS "4 images in $(( $(date +%s) - t0 )) s"
  else
    result "generate $p" FAIL "$(grep -E '^error:|Error' "$WORK/gen-$p.log" | tail -1)"
  fi
done

# ---------------------------------------------------------------- 6: 2-process NCCL
if [[ $MODE == gpu && $NGPU -ge 2 ]]; then
  accelerate launch --multi_gpu --num_processes 2 synth/finetune.py "${RECIPE[@]}" --pretrained_model_name_or_path "$WORK/sd21-base" \
    --output_dir "$WORK/ddp" --max_train_steps 4 >"$WORK/ddp.log" 2>&1
  rc=$?
  verdict=$([[ $rc == 0 ]] && check_export "$WORK/ddp" 2>>"$WORK/ddp.log" || echo "exit $rc: $(grep -E '^error:|Error' "$WORK/ddp.log" | tail -1)")
  [[ $verdict == ok ]] && result "2-process NCCL" PASS "accelerate launch --multi_gpu, 2 processes" || result "2-process NCCL" FAIL "$verdict"
else
  result "2-process NCCL" SKIP "$NGPU GPU(s) here (needs >= 2)"
fi

# ---------------------------------------------------------------- 7: ablation re-run with cached stages
if [[ $MODE == gpu && $(elapsed) -lt 240 ]]; then
  sed -e 's/^name: demo/name: gpu-acceptance/' -e 's/phantom_n: 3000/phantom_n: 1200/' \
      -e 's/^arms: .*/arms: [real_only, synthetic_filtered]/' configs/ablation/demo.yaml >"$WORK/ablation.yaml"
  t0=$(date +%s)
  timeout $(( 460 - $(elapsed) )) synth ablate --config "$WORK/ablation.yaml" --output-root "$WORK/abl" >"$WORK/abl1.log" 2>&1; rc=$?
  t1=$(date +%s)
  timeout 90 synth ablate --config "$WORK/ablation.yaml" --output-root "$WORK/abl" >"$WORK/abl2.log" 2>&1; rc2=$?
  t2=$(date +%s)
  if [[ $rc == 0 && $rc2 == 0 && $(( t2 - t1 )) -lt $(( (t1 - t0) / 3 + 30 )) ]]; then
    result "ablation re-run cached" PASS "first $(( t1 - t0 )) s, re-run $(( t2 - t1 )) s"
  else
    result "ablation re-run cached" FAIL "exit $rc/$rc2, first $(( t1 - t0 )) s, re-run $(( t2 - t1 )) s (see $WORK/abl2.log)"
  fi
else
  result "ablation re-run cached" SKIP "$([[ $MODE == cpu ]] && echo 'CPU dry run' || echo "only $(( 480 - $(elapsed) )) s of the 8-minute budget left")"
fi

echo
echo "== gpu_acceptance ($MODE) in $(elapsed) s, $FAILS FAIL; logs in $WORK"
printf '%s\n' "${RESULTS[@]}"
exit $FAILS
