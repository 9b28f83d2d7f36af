"""The decoded-image cache: start-up time and memory, decoding vs. mapping the cache.

What it prints (each measurement in a fresh child process, so caches in memory never help):

1. CIFAR-10 train folder (`--image-size 32 --channels 3`, 50,000 JPEGs): seconds from launching
   `vaelab train` to the end of its first training step, first run (decodes every JPEG and writes
   the cache) and second run (maps the cache), with the data-loading part of each.
2. Peak memory of a short run (`--steps` training steps of a small MLP VAE, the cache current) on the
   first 5,000 images (500 per class, a folder of links) and on all 50,000, and on all 50,000
   without the cache (`--no-cache`: decoded into memory). Reported from /proc/self/status, sampled
   every 10 ms: peak RSS (VmHWM), peak anonymous memory (RssAnon: heap, tensors, arrays) and peak
   file-backed memory (RssFile: mapped files, the cache's pages among them; they count in RSS but
   are page cache the kernel can drop and re-read, not memory the process owns).
3. A generated CT study: `--ct-series` series of `--ct-slices` slices of 512×512 int16 DICOM (one
   series per patient: the splits are by patient, so a dataset needs at least 3), loaded as
   `--dataset dicom --image-size 64` with per-series percentile windows: load seconds and peak
   memory, first run (decode) and second run (cache).

    flock /tmp/vaelab-cpu.lock python benchmarks/data_cache.py            # everything (a few minutes)
    python benchmarks/data_cache.py --quick                               # a quick check that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# shared/ sits beside the main checkout (and above a worktree's folder)
SHARED = next((p / "shared" for p in REPO.parents if (p / "shared" / "datasets").is_dir()), REPO.parent / "shared")
CIFAR = SHARED / "datasets" / "cifar10-jpeg" / "train"
STATUS_KEYS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")


def cpu_model() -> str:
    """The CPU's model name and the number of cores this process may use."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {len(os.sched_getaffinity(0))} cores available"


# ---- child side: one measurement -----------------------------------------------------------------


class MemorySampler(threading.Thread):
    """Peak VmRSS / RssAnon / RssFile of this process (kB), sampled every 10 ms from /proc/self/status."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = dict.fromkeys(STATUS_KEYS, 0)
        self.running = True

    def sample(self) -> None:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in self.peak:
                self.peak[key] = max(self.peak[key], int(value.split()[0]))

    def run(self) -> None:
        while self.running:
            self.sample()
            time.sleep(0.01)

    def stop(self) -> dict[str, int]:
        self.running = False
        self.join()
        self.sample()
        hwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                   if line.startswith("VmHWM"))
        return {**self.peak, "VmHWM": hwm}


class StopTraining(Exception):
    """Raised from the training batches once enough steps are done."""


def child(spec: dict) -> dict:
    """Run one measurement described by `spec`; return its numbers."""
    sampler = MemorySampler()
    sampler.start()
    import vaelab.training as training
    from vaelab.config import DataConfig
    from vaelab.data import load_data

    if spec["kind"] == "load":
        started = time.perf_counter()
        data = load_data(DataConfig(**spec["data"]))
        seconds = time.perf_counter() - started
        return {"load_seconds": seconds, "images": sum(len(data.split(s)) for s in ("train", "val", "test")),
                **sampler.stop()}

    # "train": `vaelab train` in this process, stopped after spec["steps"] steps.
    real_iterate, real_load = training.iterate_batches, training.load_data
    marks: dict[str, float] = {}
    steps = {"done": 0}

    def timed_load(cfg):
        started = time.time()
        data = real_load(cfg)
        marks["load_seconds"] = time.time() - started
        return data

    def counted(*args, **kwargs):
        if not kwargs.get("shuffle"):
            yield from real_iterate(*args, **kwargs)
            return
        for item in real_iterate(*args, **kwargs):
            if steps["done"] == 1:
                marks.setdefault("first_step_end", time.time())
            if steps["done"] == spec["steps"]:
                raise StopTraining
            steps["done"] += 1
            yield item

    training.iterate_batches, training.load_data = counted, timed_load
    from vaelab.cli import main

    try:
        main(["train", *spec["argv"], "--quiet"])
    except StopTraining:
        pass
    return {**marks, "steps": steps["done"], **sampler.stop()}


# ---- parent side ------------------------------------------------------------------------------------


def run_child(spec: dict, env: dict) -> dict:
    launched = time.time()
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, capture_output=True,
                         text=True, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"child failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if "first_step_end" in result:
        result["to_first_step"] = result["first_step_end"] - launched
    return result


def mb(kb: int) -> str:
    return f"{kb / 1024:7.1f} MB"


def memory_line(label: str, r: dict) -> str:
    return (f"  {label:<34} peak RSS {mb(r['VmHWM'])}   anonymous {mb(r['RssAnon'])}   "
            f"file-backed {mb(r['RssFile'])}")


def subset_folder(source: Path, per_class: int, into: Path) -> Path:
    """The first `per_class` images of each class of `source`, as symbolic links."""
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        (into / class_dir.name).mkdir(parents=True, exist_ok=True)
        for image in sorted(class_dir.iterdir())[:per_class]:
            (into / class_dir.name / image.name).symlink_to(image)
    return into


def write_ct_study(folder: Path, series: int, slices: int, size: int) -> None:
    from vaelab.data.synthetic_scans import phantom, write_dicom_series

    for s in range(series):
        volume = phantom((slices, size, size), seed=s)
        write_dicom_series(folder / f"patient{s}", volume, series=f"ct{s}", identity={"PatientID": f"BENCH{s}"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", default=str(CIFAR), help="the CIFAR-10 train folder (class sub-folders)")
    parser.add_argument("--small", type=int, default=500, help="images per class of the small set (default 500)")
    parser.add_argument("--steps", type=int, default=400, help="training steps of the memory runs (default 400: "
                        "about one epoch of 50,000)")
    parser.add_argument("--ct-series", type=int, default=3, help="series (patients) of the CT study (default 3)")
    parser.add_argument("--ct-slices", type=int, default=100, help="slices per series (default 100: 300 in all)")
    parser.add_argument("--ct-size", type=int, default=512, help="rows = columns of each slice (default 512)")
    parser.add_argument("--quick", action="store_true", help="small sizes: check that the script runs")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.quick:
        args.small, args.steps, args.ct_series, args.ct_slices, args.ct_size = 50, 5, 3, 6, 64

    print(f"CPU: {cpu_model()}; python {platform.python_version()}")
    root = Path(args.data_dir)
    with tempfile.TemporaryDirectory(prefix="vaelab-bench-") as tmp_name:
        tmp = Path(tmp_name)
        env = {**os.environ, "VAELAB_DATA": str(tmp / "cache"), "OMP_NUM_THREADS": "1",
               "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
        # A small MLP: the numbers are about the data, and its steps take milliseconds on a shared CPU.
        model = ["--arch", "mlp", "--hidden", "256", "--latent-dim", "32", "--epochs", "1000", "--batch-size", "128",
                 "--threads", "1"]
        folder_args = ["--dataset", "folder", "--image-size", "32", "--channels", "3"]
        full = subset_folder(root, 200, tmp / "quick") if args.quick else root
        n_full = sum(1 for _ in full.rglob("*.jpg"))

        # 1. time to the first training step, decoding vs. mapping
        print(f"\n1. time from launching `vaelab train` to the end of its first step ({n_full} images of {root})")
        for label in ("first run (decode + write cache)", "second run (map the cache)"):
            r = run_child({"kind": "train", "steps": 1,
                           "argv": [*folder_args, "--data-dir", str(full), *model, "--out", str(tmp / "r1"),
                                    "--force"]}, env)
            print(f"  {label:<34} {r['to_first_step']:6.2f} s   (of which loading the data {r['load_seconds']:6.2f} s)")

        # 2. peak memory of a short run as the dataset grows
        small = subset_folder(root, args.small, tmp / "small")
        n_small = sum(1 for _ in small.rglob("*.jpg"))
        print(f"\n2. peak memory of a {args.steps}-step run (MLP VAE 256 hidden, batch 128)")
        for label, folder, extra in ((f"{n_small} images, cache", small, []), (f"{n_full} images, cache", full, []),
                                     (f"{n_full} images, --no-cache", full, ["--no-cache"])):
            spec = {"kind": "train", "steps": args.steps,
                    "argv": [*folder_args, "--data-dir", str(folder), *model, "--out", str(tmp / "r2"), "--force",
                             *extra]}
            if not extra:
                run_child({**spec, "steps": 1}, env)  # make the cache current first
            print(memory_line(label, run_child(spec, env)))
        cache_files = sorted((tmp / "cache" / "decoded").glob("*.bin"))
        print("  cache files: " + ", ".join(f"{p.stat().st_size / 2**20:.1f} MB" for p in cache_files))

        # 3. a generated CT study
        study = tmp / "ct"
        started = time.perf_counter()
        write_ct_study(study, args.ct_series, args.ct_slices, args.ct_size)
        n_files = sum(1 for _ in study.rglob("*.dcm"))
        print(f"\n3. a generated CT study: {args.ct_series} series × {args.ct_slices} slices of "
              f"{args.ct_size}×{args.ct_size} int16 ({n_files} files, "
              f"{sum(p.stat().st_size for p in study.rglob('*.dcm')) / 2**20:.0f} MB, written in "
              f"{time.perf_counter() - started:.1f} s), --dataset dicom --image-size 64, percentile windows")
        spec = {"kind": "load", "data": {"dataset": "dicom", "data_dir": str(study), "image_size": 64,
                                          "class_folders": False}}
        for label in ("first run (decode + write cache)", "second run (map the cache)"):
            r = run_child(spec, env)
            print(f"  {label:<34} {r['load_seconds']:6.2f} s for {r['images']} slices")
            print(memory_line("", r))


if __name__ == "__main__":
    main()
