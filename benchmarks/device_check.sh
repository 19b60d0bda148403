#!/usr/bin/env bash
# GPU check for a lent CUDA machine (issue 11), one prepared run of under 8 minutes. Here first:
#   bash benchmarks/device_wheels.sh && echo /.whl/ >> .git/info/exclude
# then with the device tool: command "bash benchmarks/device_check.sh", carry [".whl"], timeout 540.
# The machine has no network: it runs the image's python3 (CUDA torch) with the carried wheels on PYTHONPATH. The
# sample CTs do not fit in the carry beside the wheels, so the CTs are LiverSeg's phantom stacked to 512x512x300
# (the liver box spans all 300 slices: the fine stage's worst case); .cache/samples, when it travels, adds the
# real sample CTs to the speed step. Results land in $OUT (the tool's folder, else benchmarks/results/device):
#  1. the CUDA-dependent tests (memory fallback, device choice)
#  2. segment the 512x512x300 volume (and the samples) on the GPU: per-stage times, peak VRAM (speed.py, ours)
#  3. a real out-of-memory with the memory fraction capped: the fallback's labels must equal the uncapped run's
#  4. time DI2IN-AN training steps on the GPU (supervised steps, then adversarial iterations)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/device}"
mkdir -p "$OUT"
export LIVERSEG_HOME="${LIVERSEG_HOME:-$PWD/.cache}" PYTHONUNBUFFERED=1
log() { echo "== $(date +%T) $*" | tee -a "$OUT/device_check.log"; }
step() { local name=$1; shift; log "$name: $*"; local t0=$SECONDS
  timeout "${STEP_TIMEOUT:-150}" "$@" >> "$OUT/$name.txt" 2>&1; local rc=$?
  log "$name: exit $rc after $((SECONDS - t0)) s"; }

log "machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)"
PY="${PYTHON:-python3}"
if [ -d .whl ]; then
  step wheels "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
step cuda_info "$PY" -c "import torch, monai, SimpleITK; print(torch.__version__, torch.version.cuda, \
torch.cuda.is_available(), torch.cuda.get_device_name(0), 'monai', monai.__version__)"
step tests "$PY" -m pytest -q -x -p no:cacheprovider Testing/test_memory_fallback.py Testing/test_cascade.py \
  -k "memory or fallback or unseen"
step big_ct "$PY" benchmarks/make_big_ct.py "$OUT/big_300.nrrd" --slices 300 --source phantom
samples=()
[ -d .cache/samples ] && samples=(ts_example_ct ts_example_dicom lits117)
STEP_TIMEOUT=240 step speed "$PY" benchmarks/speed.py "${samples[@]}" "$OUT/big_300.nrrd" \
  --device cuda --repeat 3 --no-peer --out "$OUT/speed_cuda"
step oom "$PY" benchmarks/gpu_oom_check.py "$OUT/big_300.nrrd" --fraction 0.02
step di2in_an bash -c "rm -rf '$OUT/di2in_data' '$OUT/di2in_run' && mkdir -p '$OUT/di2in_data' && \
  $PY -c \"from LiverSegLib.data.phantoms import make_phantom; from LiverSegLib.io import write_volume; \
ct, lab = make_phantom((64, 160, 160), (1.6, 1.6, 2.5), seed=3); write_volume(ct, '$OUT/di2in_data/ct.nii.gz'); \
write_volume(lab, '$OUT/di2in_data/ct_seg.nii.gz')\" && \
  $PY -m LiverSegLib train di2in_an --data '$OUT/di2in_data' --out '$OUT/di2in_run' --device cuda --max-steps 20 \
  --set adversarial.iterations=5 && tail -5 '$OUT/di2in_run/log.csv'"
rm -f "$OUT/big_300.nrrd"
log "done; results in $OUT (speed_cuda.md, oom.txt, di2in_an.txt)"
