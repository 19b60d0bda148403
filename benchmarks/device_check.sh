#!/usr/bin/env bash
# GPU check for a lent CUDA machine (issue 11), one prepared run of under 8 minutes. Run from the repository root:
#   bash benchmarks/device_check.sh            (writes $OUT, default benchmarks/results/device)
# The machine has no network beyond the package index: the sample CTs must travel with the working tree as
# .cache/samples (fill it here first: LIVERSEG_HOME=$PWD/.cache python -m LiverSegLib.data.samples).
#  1. a venv with the CUDA torch wheel of the tested release (PyPI's Linux torch wheel carries CUDA) + the project
#  2. the CUDA-dependent tests (memory fallback, device choice)
#  3. segment the sample CTs and a 512 x 512 x 300 stacked volume on the GPU: per-stage times, peak VRAM
#     (benchmarks/speed.py --device cuda, ours only)
#  4. a real out-of-memory with the memory fraction capped: the fallback's labels must equal the uncapped run's
#  5. time DI2IN-AN training steps on the GPU (supervised steps, then adversarial iterations)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/device}"
mkdir -p "$OUT"
export LIVERSEG_HOME="${LIVERSEG_HOME:-$PWD/.cache}"
log() { echo "== $(date +%T) $*" | tee -a "$OUT/device_check.log"; }
step() { local name=$1; shift; log "$name: $*"; local t0=$SECONDS
  timeout "${STEP_TIMEOUT:-150}" "$@" >> "$OUT/$name.txt" 2>&1; local rc=$?
  log "$name: exit $rc after $((SECONDS - t0)) s"; }

log "machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)"
if [ ! -x .venv-gpu/bin/python ]; then
  step venv bash -c "python3 -m venv .venv-gpu && .venv-gpu/bin/pip install -q torch==2.13.0 -e '.[dev]'"
fi
PY=.venv-gpu/bin/python
step cuda_info "$PY" -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name(0))"
step tests "$PY" -m pytest -q -x Testing/test_memory_fallback.py Testing/test_cascade.py -k "memory or fallback or unseen"
step big_ct "$PY" benchmarks/make_big_ct.py "$OUT/big_300.nrrd" --slices 300
STEP_TIMEOUT=240 step speed "$PY" benchmarks/speed.py ts_example_ct ts_example_dicom lits117 "$OUT/big_300.nrrd" \
  --device cuda --repeat 3 --no-peer --out "$OUT/speed_cuda"
step oom "$PY" benchmarks/gpu_oom_check.py "$OUT/big_300.nrrd" --fraction 0.02
step di2in_an bash -c "rm -rf '$OUT/di2in_data' '$OUT/di2in_run' && mkdir -p '$OUT/di2in_data' && \
  $PY -c \"from LiverSegLib.data.samples import load_case; from LiverSegLib.io import write_volume; \
ct, lab = load_case('ts_example_ct'); write_volume(ct, '$OUT/di2in_data/ct.nii.gz'); \
write_volume(lab, '$OUT/di2in_data/ct_seg.nii.gz')\" && \
  $PY -m LiverSegLib train di2in_an --data '$OUT/di2in_data' --out '$OUT/di2in_run' --device cuda --max-steps 20 \
  --set adversarial.iterations=5 && tail -5 '$OUT/di2in_run/log.csv'"
rm -f "$OUT/big_300.nrrd"
log "done; results in $OUT (speed_cuda.md, oom.txt, di2in_an.txt)"
