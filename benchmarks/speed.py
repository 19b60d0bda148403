"""Time LiverSeg's cascade per stage on real CTs, beside a SegResNet sliding-window peer on the same CT and device.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/speed.py ts_example_dicom --repeat 1      # a quick check
    .venv/bin/python benchmarks/speed.py ts_example_ct ts_example_dicom lits117 /path/ct.nii.gz \
        [--device cpu|cuda|auto] [--repeat 3] [--model ID] [--quick] [--no-peer] [--threads N] \
        [--peer-roi 96,96,96] [--out benchmarks/results/speed]

A CT is a file, a DICOM folder, or a sample case of :mod:`LiverSegLib.data.samples` (``lits117``, stored as MRC, is
first written to a temporary .nii.gz so that "read" is always a real file read). Everything runs in one process.

Ours, per repeat: read (``read_volume``), the ``Predictor.predict`` stages (``result.timings_s``), write
(``write_case_outputs`` to a temporary folder), end to end = read + predict + write. Model load (``Predictor(...)``)
is timed once. Peer, per repeat, on the already read volume: MONAI ``SegResNet`` (random weights, see PEER_NET) as
SlicerMONAIAuto3DSeg runs Auto3DSeg's segresnet (its Scripts/auto3dseg_segresnet_inference.py): canonical orientation,
crop to the body (HU > 0, margin 10), 1.5 mm ``Spacing`` (bilinear), CT intensity scaling + sigmoid,
``sliding_window_inference`` (overlap 0.625, gaussian, sw_batch 1 on CPU / 4 on CUDA, channels-last, autocast on
CUDA), softmax, probabilities resampled back (the inverted crop + spacing) to the native grid, argmax.
The ratio ours/peer compares ``predict`` alone: no read (identical for both) and no write (the peer writes nothing).

The first repeat is reported as "cold"; medians are over the later repeats (over the single run when --repeat 1).
Peak RSS per section: /proc/self/status VmHWM after resetting it (/proc/self/clear_refs), else a 10 ms sampling
thread (psutil when installed, else /proc/self/statm); the process-lifetime ``ru_maxrss`` is in the JSON too.
Writes ``<out>.json`` (raw numbers, machine) and ``<out>.md`` (the tables printed). A harness, not a test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from LiverSegLib.data import samples  # noqa: E402
from LiverSegLib.errors import InputError  # noqa: E402
from LiverSegLib.io import read_volume, write_volume  # noqa: E402
from LiverSegLib.outputs import write_case_outputs  # noqa: E402
from LiverSegLib.pipeline.geometry import to_canonical  # noqa: E402
from LiverSegLib.pipeline.predictor import Predictor, resolve_device  # noqa: E402
from LiverSegLib.types import Volume  # noqa: E402

STAGES = ("prepare", "coarse", "box", "fine", "post")
# Auto3DSeg's segresnet is SegResNetDS(init_filters=32, blocks_down=(1,2,2,4,4)); the plain SegResNet below has the
# same width and the same full-resolution blocks, which is where nearly all of the compute is.
PEER_NET = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "init_filters": 32,
            "blocks_down": (1, 2, 2, 4), "blocks_up": (1, 1, 1)}
PEER_SPACING_MM = 1.5
PEER_OVERLAP = 0.625
PEER_HU_BOUNDS = (-160.0, 240.0)  # Auto3DSeg takes percentiles of the training set; the value does not change speed


# ---------------------------------------------------------------------------------------------------- memory
def _rss_now() -> int:
    try:
        import psutil  # optional

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _vmhwm() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            line = next(ln for ln in fh if ln.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration):
        return None


class PeakMemory:
    """Peak RSS (bytes) and peak CUDA allocation (bytes) of a ``with`` block."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.rss = 0
        self.gpu: int | None = None

    def __enter__(self) -> PeakMemory:
        try:  # "5" resets VmHWM to the current RSS (Linux >= 4.0): an exact per-section peak, no sampling gaps
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self._hwm_reset = True
        except OSError:
            self._hwm_reset = False
        self._stop = threading.Event()
        self._sampled = _rss_now()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self._sampled = max(self._sampled, _rss_now())

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.gpu = int(torch.cuda.max_memory_allocated())
        self._stop.set()
        self._thread.join()
        hwm = _vmhwm() if self._hwm_reset else None
        self.rss = max(self._sampled, hwm or 0)


def _gb(n: int | None) -> float | None:
    return None if n is None else round(n / 1e9, 3)


# ---------------------------------------------------------------------------------------------------- inputs
def resolve_ct(arg: str, tmp: Path) -> Path:
    """A path as given, or the real file/folder of a sample case (written to ``tmp`` when only a Volume exists)."""
    if Path(arg).exists():
        return Path(arg)
    if arg not in samples.CASES:
        raise InputError(f"{arg!r} is neither an existing path nor a sample case ({', '.join(samples.CASES)})")
    info = samples.case_info(arg)
    if "files" in info:
        root = (samples.shared_data_dir() or Path("/nonexistent")) if info["source"] == "shared" \
            else samples.fetch_source(info["source"])
        path = root / info["dir"] / info["files"][0]
        if path.exists():
            return path
    ct, _ = samples.load_case(arg)  # lits117 is MRC, which read_volume does not read
    return write_volume(ct, tmp / f"{arg}.nii.gz")


# ---------------------------------------------------------------------------------------------------- ours
def run_ours(path: Path, predictor: Predictor, quick: bool, outdir: Path) -> tuple[Volume, dict[str, Any]]:
    with PeakMemory(predictor.device) as mem:
        t0 = time.perf_counter()
        volume = read_volume(path)
        read_s = time.perf_counter() - t0
        result = predictor.predict(volume, quick=quick)
        t1 = time.perf_counter()
        write_case_outputs(result, volume, outdir, extra_summary={"input": {"path": str(path)}})
        write_s = time.perf_counter() - t1
        e2e = time.perf_counter() - t0
    run = {"read": read_s, **{k: result.timings_s.get(k, 0.0) for k in STAGES}, "write": write_s}
    run["predict"] = sum(run[k] for k in STAGES)
    run.update(e2e=e2e, peak_rss_gb=_gb(mem.rss), peak_gpu_gb=_gb(mem.gpu),
               box_zyx=result.details.get("box_canonical_zyx"), box_fallback=result.details.get("box_fallback"))
    return volume, run


# ---------------------------------------------------------------------------------------------------- peer
def make_peer(device: torch.device) -> torch.nn.Module:
    from monai.networks.nets import SegResNet

    torch.manual_seed(0)  # random weights: the timing does not depend on them, the argmax is meaningless
    net = SegResNet(**PEER_NET).to(device).eval()
    return net.to(memory_format=torch.channels_last_3d)  # as the Slicer script does


def _windows(shape: tuple[int, ...], roi: tuple[int, ...]) -> int:
    """Sliding-window count as MONAI counts it (the image is padded up to the roi first)."""
    n = 1
    for size, r in zip(shape, roi, strict=True):
        size = max(size, r)
        step = max(int(r * (1 - PEER_OVERLAP)), 1)
        n *= int(np.ceil((size - r) / step)) + 1 if size > r else 1
    return n


def run_peer(volume: Volume, net: torch.nn.Module, device: torch.device, roi: tuple[int, int, int]) -> dict[str, Any]:
    from monai.data import MetaTensor
    from monai.inferers import sliding_window_inference
    from monai.transforms import Compose, CropForeground, Spacing

    def sync() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    sw_batch = 4 if device.type == "cuda" else 1
    with PeakMemory(device) as mem, torch.inference_mode():
        t0 = sync()
        canonical, orientation = to_canonical(volume)
        # MONAI wants (C, x, y, z); the affine only needs the spacing (canonical axes are the patient axes).
        x = torch.from_numpy(np.ascontiguousarray(canonical.array_zyx.transpose(2, 1, 0), dtype=np.float32))[None]
        img = MetaTensor(x, affine=torch.diag(torch.tensor([*canonical.spacing_xyz, 1.0], dtype=torch.float64)))
        pre = Compose([CropForeground(margin=10, allow_smaller=True),  # default select_fn: > 0 HU = the body
                       Spacing(pixdim=(PEER_SPACING_MM,) * 3, mode="bilinear", dtype=torch.float32)])
        img = pre(img)
        lo, hi = PEER_HU_BOUNDS
        data = torch.sigmoid((img.as_tensor() - lo) / (hi - lo) * 2.0 - 1.0)[None]
        data = data.to(device).to(memory_format=torch.channels_last_3d)
        t1 = sync()
        with torch.autocast("cuda", enabled=device.type == "cuda"):
            logits = sliding_window_inference(data, roi, sw_batch, net, overlap=PEER_OVERLAP, mode="gaussian")
        t2 = sync()
        prob = torch.softmax(logits.float(), dim=1)[0]
        del logits
        pred = MetaTensor(prob, meta=dict(img.meta))  # the meta holds the affine
        pred.applied_operations = img.applied_operations  # lets Compose.inverse undo the spacing, then the crop
        prob_native = pre.inverse(pred)
        labels = torch.argmax(prob_native, dim=0).to(torch.uint8).cpu().numpy().transpose(2, 1, 0)
        labels = np.ascontiguousarray(orientation.invert(labels))
        t3 = sync()
    assert labels.shape == volume.array_zyx.shape, (labels.shape, volume.array_zyx.shape)
    grid = tuple(int(s) for s in data.shape[2:])
    return {"resample": t1 - t0, "infer": t2 - t1, "back": t3 - t2, "total": t3 - t0, "grid_xyz": list(grid),
            "windows": _windows(grid, roi), "peak_rss_gb": _gb(mem.rss), "peak_gpu_gb": _gb(mem.gpu)}


# ---------------------------------------------------------------------------------------------------- report
def _summary(runs: list[dict[str, Any]], key: str) -> dict[str, float]:
    warm = runs[1:] or runs  # the first run pays one-off costs (allocator, kernels, file cache): kept apart
    return {"cold": runs[0][key], "median": statistics.median(r[key] for r in warm)}


def _peak(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r[key] is not None]
    return max(values) if values else None


def _f(v: float | None, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def tables(cases: list[dict[str, Any]], load_s: float) -> str:
    ours_cols = ["read", *STAGES, "write", "e2e"]
    out = [f"Ours (seconds; median of warm repeats; model load {load_s:.2f} s once, not included)", "",
           "| CT | size xyz | " + " | ".join(ours_cols) + " | e2e cold | peak RSS GB | peak GPU GB |",
           "|---|---|" + "---:|" * (len(ours_cols) + 3)]
    for c in cases:
        runs = c["ours"]
        med = [_f(_summary(runs, k)["median"]) for k in ours_cols]
        out.append(f"| {c['name']} | {'x'.join(map(str, c['size_xyz']))} | " + " | ".join(med)
                   + f" | {_f(runs[0]['e2e'])} | {_f(_peak(runs, 'peak_rss_gb'))} | {_f(_peak(runs, 'peak_gpu_gb'))} |")
    if any(c.get("peer") for c in cases):
        out += ["", "Peer: SegResNet at 1.5 mm, sliding window (seconds, no read; ratio = ours predict / peer total, "
                "both without read and write)", "",
                "| CT | 1.5 mm grid xyz | windows | resample | infer | back | total | total cold | ours predict | "
                "ours/peer | peak RSS GB | peak GPU GB |", "|---|---|" + "---:|" * 10]
        for c in cases:
            if not c.get("peer"):
                continue
            p, o = c["peer"], c["ours"]
            tot, ours = _summary(p, "total")["median"], _summary(o, "predict")["median"]
            out.append(f"| {c['name']} | {'x'.join(map(str, p[0]['grid_xyz']))} | {p[0]['windows']} | "
                       + " | ".join(_f(_summary(p, k)["median"]) for k in ("resample", "infer", "back"))
                       + f" | {_f(tot)} | {_f(p[0]['total'])} | {_f(ours)} | {_f(ours / tot, 3)} | "
                       f"{_f(_peak(p, 'peak_rss_gb'))} | {_f(_peak(p, 'peak_gpu_gb'))} |")
    return "\n".join(out) + "\n"


def machine(device: torch.device) -> dict[str, Any]:
    import monai

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
            "cpu": cpu, "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "load_avg_1_5_15": list(os.getloadavg()), "torch_threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
            "torch": torch.__version__, "monai": monai.__version__, "python": platform.python_version(),
            "commit": commit}


# ---------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ct", nargs="+", help="CT file, DICOM folder, or sample case name")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--repeat", type=int, default=3, help="runs per CT (the first is reported as cold)")
    ap.add_argument("--model", help="model id (default: the catalogue's default)")
    ap.add_argument("--quick", action="store_true", help="time our --quick mode (3 mm grid)")
    ap.add_argument("--no-peer", action="store_true", help="skip the SegResNet peer")
    ap.add_argument("--peer-roi", default="96,96,96", help="peer sliding-window roi x,y,z (default 96,96,96)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads(N) and the ONNX engine's threads")
    ap.add_argument("--runtime", default="auto", help="ours: auto (OpenVINO on the CPU), torch, openvino, onnxruntime")
    ap.add_argument("--precision", default="auto", help="ours, ONNX engines: auto (fp32), fp32, bf16")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "speed"), help="writes <out>.json/.md")
    args = ap.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    roi = tuple(int(v) for v in args.peer_roi.split(","))
    if len(roi) != 3:
        ap.error("--peer-roi needs three integers, e.g. 96,96,96")
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    predictor = Predictor(args.model, device=device, runtime=args.runtime, precision=args.precision,
                          threads=args.threads)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    net = None if args.no_peer else make_peer(device)
    peer_load_s = time.perf_counter() - t0
    cases: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="liverseg-speed-") as tmp_name:
        tmp = Path(tmp_name)
        for arg in args.ct:
            path = resolve_ct(arg, tmp)
            case: dict[str, Any] = {"name": arg, "path": str(path), "ours": [], "peer": []}
            for r in range(args.repeat):
                volume, run = run_ours(path, predictor, args.quick, tmp / f"{len(cases)}-{r}")
                case["ours"].append(run)
                case.update(size_xyz=list(volume.shape_xyz), spacing_xyz=[round(s, 4) for s in volume.spacing_xyz])
                if net is not None:
                    case["peer"].append(run_peer(volume, net, device, roi))
                print(f"{arg} run {r + 1}/{args.repeat}: ours e2e {run['e2e']:.2f} s"
                      + (f", peer {case['peer'][-1]['total']:.2f} s" if net is not None else ""), file=sys.stderr)
                del volume
            cases.append(case)

    table = tables(cases, load_s)
    print(table)
    report = {"machine": machine(device), "ru_maxrss_gb": _gb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                                               * 1024),
              "model": {"id": predictor.model.id, "version": predictor.model.version, "quick": args.quick,
                        "load_s": load_s, "runtime": predictor.runtimes},
              "peer": None if net is None else {"net": "monai.networks.nets.SegResNet", **PEER_NET,
                                                "spacing_mm": PEER_SPACING_MM, "roi": list(roi),
                                                "overlap": PEER_OVERLAP, "mode": "gaussian",
                                                "sw_batch_size": 4 if device.type == "cuda" else 1,
                                                "load_s": peer_load_s},
              "repeat": args.repeat, "cases": cases}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    m = report["machine"]
    head = (f"# LiverSeg speed, {m['date']}\n\n{m['device_name']} ({m['device']}), {m['cpus_usable']} usable CPUs, "
            f"torch {m['torch']} with {m['torch_threads']} threads, MONAI {m['monai']}, model {predictor.model.id}"
            f" run by {' / '.join(sorted(set(predictor.runtimes.values())))}"
            f"{' --quick' if args.quick else ''}, {args.repeat} repeat(s), load average {m['load_avg_1_5_15'][0]:.1f}"
            f"\n\n")
    Path(f"{out}.md").write_text(head + table, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
