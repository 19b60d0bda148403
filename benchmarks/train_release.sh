#!/usr/bin/env bash
# Train the shipped cascade (han-liver) and its four leave-one-out folds on a 2-core CPU, two runs at a time.
# State lives in $LIVERSEG_HOME (default ~/.liverseg); rerun the same command after an interruption: finished
# stages are kept and unfinished ones continue from their training_state.pt (--resume).
#   1. the synthetic pools:  python -m LiverSegLib.training.synth_pool --out $H/pool/coarse --grid coarse --per-source 4
#                            python -m LiverSegLib.training.synth_pool --out $H/pool/native --grid native --per-source 2
#   2. this script; 3. python benchmarks/accuracy.py --release-dir $H/release
set -euo pipefail
H="${LIVERSEG_HOME:-$HOME/.liverseg}"
STEPS="${STEPS:---coarse-steps 1200 --fine-steps 1000}"
export OMP_NUM_THREADS=1
PY="${PYTHON:-python}"  # e.g. PYTHON=.venv/bin/python
run() {  # one fold after another; "all" is the shipped model
  for fold in "$@"; do
    args=(--out "$H/release/$fold" --threads 1 --resume $STEPS)
    [[ "$fold" != all ]] && args+=(--leave-out "$fold")
    "$PY" -m LiverSegLib.training.release_weights "${args[@]}" > "$H/release/$fold.log" 2>&1
  done
}
mkdir -p "$H/release"
run ircadb1_19 ts_example_dicom all &
run lits117 ts_example_ct &
wait
