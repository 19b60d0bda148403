#!/usr/bin/env bash
# Pack the leave-one-out folds (and `all`) of several release_weights runs into ensemble folds, stage by stage, so
# that benchmarks/accuracy.py scores the ensemble exactly as it would ship (one MeanEnsemble checkpoint per stage).
#   bash benchmarks/ensemble_folds.sh OUT "COARSE_DIR ..." "FINE_DIR ..." [FOLD ...]
# e.g. bash benchmarks/ensemble_folds.sh $H/ens "$H/rel $H/relR1" "$H/rel" && python benchmarks/accuracy.py \
#        --release-dir $H/ens
# A stage with one directory is copied as it is; FOLD defaults to the four leave-one-out cases and `all` (a fold
# missing in any member directory is skipped with a message). Each member must be the same fold: a fold's ensemble
# of folds trained without its case has still never seen it.
set -euo pipefail
PY="${PYTHON:-python}"
out=$1; read -r -a coarse <<<"$2"; read -r -a fine <<<"$3"; shift 3
folds=("$@"); [ ${#folds[@]} -gt 0 ] || folds=(ircadb1_19 lits117 ts_example_ct ts_example_dicom all)
for fold in "${folds[@]}"; do
  ok=1
  for d in "${coarse[@]}"; do [ -f "$d/$fold/han_liver_coarse.pt" ] || { echo "$fold: no $d/$fold/han_liver_coarse.pt, skipped"; ok=0; }; done
  for d in "${fine[@]}"; do [ -f "$d/$fold/han_liver_fine.pt" ] || { echo "$fold: no $d/$fold/han_liver_fine.pt, skipped"; ok=0; }; done
  [ $ok = 1 ] || continue
  mkdir -p "$out/$fold"
  for role in coarse fine; do
    if [ $role = coarse ]; then dirs=("${coarse[@]}"); else dirs=("${fine[@]}"); fi
    files=(); for d in "${dirs[@]}"; do files+=("$d/$fold/han_liver_$role.pt"); done
    if [ ${#files[@]} = 1 ]; then cp "${files[0]}" "$out/$fold/"
    else "$PY" -m LiverSegLib.training.ensemble_weights --out "$out/$fold/han_liver_$role.pt" "${files[@]}"; fi
  done
  rm -f "$out/$fold/loo_$fold.json"  # a score of an earlier packing would be quoted as this one's
done
