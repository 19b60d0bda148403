#!/usr/bin/env bash
# Fill .whl/ with what the GPU machine's image lacks for the CUDA path (run HERE, where pip reaches the index).
# The image has Python 3.12 with a CUDA torch, numpy, scipy, pytest, hypothesis, requests; LiverSeg's CUDA path
# also needs SimpleITK, MONAI (the networks' blocks), nibabel, connected-components-3d, jsonschema and mrcfile.
# About 60 MiB: within the device tool's 64 MiB carry, so no sample CT travels with it (device_check.sh then uses
# a phantom). Then: echo /.whl/ >> .git/info/exclude, and run device_check.sh with carry [".whl"].
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  SimpleITK==2.5.3 monai==1.6.1 nibabel==5.4.2 connected-components-3d==4.1.1 jsonschema==4.26.0 \
  jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 mrcfile==1.5.4
du -sh .whl
