"""Test-session settings shared by every test file."""

import os

import torch

# One thread per process: the suite's results (e.g. the tiny models trained inside tests) then do not depend on the
# machine's core count, and a test never slows to a crawl when the 2-core CI machine is busy with other work
# (oversubscribed OpenMP threads spin). Subprocesses started by tests inherit this.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"
