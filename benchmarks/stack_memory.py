"""Peak memory of segmenting a stack larger than 2 GB through the command line.

    python benchmarks/stack_memory.py              # 500 x 2048 x 2048 uint8 BigTIFF (2.1 GB),
                                                   # 6 planes segmented
    python benchmarks/stack_memory.py --quick      # same 2.1 GB stack, 1 plane segmented,
                                                   # every 4th plane read
    python benchmarks/stack_memory.py --format zarr --planes 3

Steps, each measured in its own child process. Peak RSS is the kernel's high-water mark of the
child's memory (``VmHWM`` in /proc/PID/status, summed over the child and any children of its own,
read every 50 ms and right before the benchmark stops it; it only grows, so polling loses
nothing but the last few ms). ``os.wait4``'s ``ru_maxrss`` is printed too as an upper bound: on
Linux it also counts this (torch-importing) script's own RSS at the moment the child was spawned.

1. ``baseline``: python + torch + napari_unet imported and the model loaded (what any run costs);
2. ``read all planes``: ``read_array(stack)`` (the lazy path) and every plane read in turn, as the
   CLI does, without segmenting: shows that walking the whole file stays bounded;
3. ``napari-unet predict MODEL STACK --out OUT.zarr``: the real CLI on the whole stack, stopped
   (SIGTERM to that child) once ``--planes`` planes are finished and recorded in the resumable zarr
   output. Segmenting all 500 planes would take hours on a CPU; the reader still opens the whole
   2 GB file lazily, so memory is bounded the same way (``--planes 0`` runs to the end).

The stack is written plane by plane (never held in memory) under a temporary folder in /tmp that is
deleted at the end (``--keep`` keeps it). Prints a table and writes
benchmarks/results/stack_memory.json (or the --out path). Goal: peak RSS < 1.5 GB.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _machine import cpu_name, write_json

RESULTS = Path(__file__).resolve().parent / "results" / "stack_memory.json"
GOAL_BYTES = 1.5e9
GB = 1e9


def machine_info() -> dict:
    import torch

    cpu = cpu_name()
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "memory_gb": round(__import__("psutil").virtual_memory().total / GB, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }


# ------------------------------------------------------------------------------------ the stack
def plane_source(n_planes: int, size: int):
    """Yield ``n_planes`` uint8 planes of ``size`` x ``size``: synthetic cells, drifting, noisy.

    Only eight 512 x 512 cell images are held; each plane tiles one of them, shifted by its index.
    """
    from napari_unet.sample_data import CellSampleConfig, make_cell_stack

    base, _ = make_cell_stack(8, CellSampleConfig(shape=(512, 512), n_cells=96), seed=0)
    reps = -(-size // 512)
    rng = np.random.default_rng(0)
    for z in range(n_planes):
        plane = np.tile(base[z % 8], (reps, reps))[:size, :size]
        plane = np.roll(plane, (3 * z, 5 * z), axis=(0, 1))
        noise = rng.integers(0, 8, size=plane.shape, dtype=np.uint8)
        yield np.ascontiguousarray(plane + noise)  # uint8 wraps only where plane > 247: harmless


def write_stack(path: Path, fmt: str, n_planes: int, size: int) -> float:
    """Write the stack plane by plane; returns seconds taken."""
    start = time.perf_counter()
    if fmt == "tiff":
        import tifffile

        tifffile.imwrite(
            path,
            data=plane_source(n_planes, size),
            shape=(n_planes, size, size),
            dtype=np.uint8,
            bigtiff=True,
            photometric="minisblack",
        )
    else:
        import zarr

        arr = zarr.open(
            str(path),
            mode="w",
            shape=(n_planes, size, size),
            chunks=(1, size, size),
            dtype=np.uint8,
        )
        for z, plane in enumerate(plane_source(n_planes, size)):
            arr[z] = plane
    return time.perf_counter() - start


def save_untrained_model(path: Path) -> None:
    import torch

    from napari_unet.io.modelfile import ModelMetadata, save_model
    from napari_unet.model import PRESETS, UNet
    from napari_unet.normalization import Normalization

    torch.manual_seed(0)
    config = PRESETS["small"]
    metadata = ModelMetadata(
        architecture=config,
        normalization=Normalization().to_dict(),
        class_names=["background", "cell"],
        provenance={"note": "untrained; benchmarks/stack_memory.py"},
    )
    save_model(path, UNet(config).eval(), metadata)


# ------------------------------------------------------------------------------------ measuring
class Child:
    """A child process whose peak RSS (with its own children) is watched until it ends."""

    def __init__(self, cmd: list[str], env: dict | None = None) -> None:
        import psutil

        self.cmd = cmd
        self.start = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.ps = psutil.Process(self.proc.pid)
        self.poll_peak = 0
        self.hwm_peak = 0
        self.lines: list[str] = []
        self._done = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._poll, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    @staticmethod
    def _hwm(pid: int) -> int:
        """VmHWM (peak resident memory of the process's current image) in bytes, 0 if gone."""
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError):
            pass
        return 0

    def sample(self) -> None:
        import psutil

        try:
            kids = self.ps.children(recursive=True)
            rss = self.ps.memory_info().rss
        except psutil.Error:
            return
        hwm = self._hwm(self.proc.pid)
        for kid in kids:
            try:
                rss += kid.memory_info().rss
            except psutil.Error:
                pass
            hwm += self._hwm(kid.pid)
        self.poll_peak = max(self.poll_peak, rss)
        self.hwm_peak = max(self.hwm_peak, hwm)

    def _poll(self) -> None:
        while not self._done.is_set():
            self.sample()
            time.sleep(0.05)

    def alive(self) -> bool:
        """Still running (checked without reaping it, so that wait() still gets its rusage)."""
        return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None

    def stop(self) -> None:
        """SIGTERM to this child only (its pid), then collect it."""
        if self.proc.returncode is None:
            self.sample()
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def wait(self) -> dict:
        """Reap the child with ``os.wait4``; peak memory as measured (see the module docstring)."""
        while self.alive():
            time.sleep(0.01)
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self._done.set()
        time.sleep(0.1)
        return {
            "returncode": self.proc.returncode,
            "seconds": time.perf_counter() - self.start,
            "peak_rss_bytes": self.hwm_peak,
            "ru_maxrss_bytes": usage.ru_maxrss
            * 1024,  # Linux: KiB; includes the parent's RSS at spawn
            "peak_rss_polled_bytes": self.poll_peak,
            "output_tail": self.lines[-6:],
        }


def run_python(code: str) -> dict:
    child = Child([sys.executable, "-c", code])
    result = child.wait()
    if result["returncode"] != 0:
        raise SystemExit(f"child failed:\n{code}\n" + "\n".join(child.lines[-20:]))
    return result


def planes_done(out: Path) -> int:
    """Finished planes recorded in a zarr output (v2 or v3), 0 while unreadable."""
    for meta, key in ((out / "zarr.json", "attributes"), (out / ".zattrs", None)):
        try:
            data = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        attrs = data.get(key, {}) if key else data
        return len(attrs.get("napari_unet_done", []))
    return 0


def cli_command() -> list[str]:
    exe = Path(sys.executable).with_name("napari-unet")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "import sys; from napari_unet.cli import main; sys.exit(main())"]


# ------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="segment 1 plane and read every 4th plane (the stack is still 2.1 GB)",
    )
    parser.add_argument("--stack-planes", type=int, default=500, help="planes in the stack")
    parser.add_argument("--size", type=int, default=2048, help="plane edge in pixels")
    parser.add_argument(
        "--planes",
        type=int,
        default=None,
        help="planes to segment before stopping the CLI (default 6, quick 1; 0 = all)",
    )
    parser.add_argument(
        "--format",
        choices=["tiff", "zarr"],
        default="tiff",
        help="stack on disk: BigTIFF (default) or a zarr array",
    )
    parser.add_argument(
        "--tmp",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="folder for the temporary stack (default /tmp)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--out", type=Path, help="JSON path (default results/stack_memory[_quick].json)"
    )
    args = parser.parse_args(argv)
    planes = args.planes if args.planes is not None else (1 if args.quick else 6)
    out_json = args.out or RESULTS.with_name(
        "stack_memory_quick.json" if args.quick else RESULTS.name
    )
    read_step = 4 if args.quick else 1

    stack_bytes = args.stack_planes * args.size * args.size
    free = shutil.disk_usage(args.tmp).free
    if free < 1.5 * stack_bytes + 1e9:
        raise SystemExit(
            f"{args.tmp} has {free / GB:.1f} GB free; need {1.5 * stack_bytes / GB + 1:.1f} GB"
        )
    print(f"disk: {free / GB:.1f} GB free under {args.tmp}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="napari-unet-stackmem-", dir=args.tmp))
    try:
        stack = workdir / ("stack.tif" if args.format == "tiff" else "stack.zarr")
        model_path = workdir / "small.safetensors"
        out = workdir / "labels.zarr"
        print(
            f"writing {args.stack_planes} x {args.size} x {args.size} uint8 "
            f"({stack_bytes / GB:.2f} GB) "
            f"to {stack} ...",
            flush=True,
        )
        write_s = write_stack(stack, args.format, args.stack_planes, args.size)
        on_disk = (
            stack.stat().st_size
            if stack.is_file()
            else sum(f.stat().st_size for f in stack.rglob("*") if f.is_file())
        )
        print(f"  written in {write_s:.0f} s, {on_disk / GB:.2f} GB on disk", flush=True)
        save_untrained_model(model_path)

        # 1. baseline: imports + model load
        print("baseline (imports + model load) ...", flush=True)
        baseline = run_python(
            "from napari_unet.inference.predictor import load_predictor\n"
            "import napari_unet.inference.batch, napari_unet.io.files\n"
            f"load_predictor({str(model_path)!r}, 'auto')\n"
        )
        # 2. every plane read through read_array's lazy path, as iter_planes does
        print(
            f"reading every {'' if read_step == 1 else f'{read_step}th '}plane lazily ...",
            flush=True,
        )
        reading = run_python(
            "import numpy as np, time\n"
            "from napari_unet.io.files import read_array\n"
            f"arr = read_array({str(stack)!r})\n"
            "print('type', type(arr).__module__, type(arr).__name__, 'shape', arr.shape, "
            "'chunks', getattr(arr, 'chunksize', None))\n"
            "t = time.perf_counter(); total = 0; n = 0\n"
            f"for i in range(0, arr.shape[0], {read_step}):\n"
            "    total += int(np.asarray(arr[i]).sum(dtype=np.uint64)); n += 1\n"
            "print('planes read', n, 'checksum', total, "
            "'seconds', round(time.perf_counter() - t, 1))\n"
        )
        print("  " + " | ".join(reading["output_tail"]), flush=True)

        # 3. the CLI on the whole stack, stopped after `planes` finished planes
        cmd = [*cli_command(), "predict", str(model_path), str(stack), "--out", str(out)]
        print(
            f"segmenting: {' '.join(cmd)}  (stopped after {planes or 'all'} planes) ...", flush=True
        )
        child = Child(cmd)
        stopped = False
        while child.alive():
            if planes and planes_done(out) >= planes:
                child.stop()
                stopped = True
                break
            time.sleep(0.2)
        segmenting = child.wait()
        done = planes_done(out)
        if not stopped and segmenting["returncode"] != 0:
            raise SystemExit("napari-unet predict failed:\n" + "\n".join(child.lines[-20:]))
        segmenting["planes_segmented"] = done
        segmenting["stopped_by_benchmark"] = stopped
        segmenting["command"] = " ".join(
            ["napari-unet", "predict", "MODEL", "STACK", "--out", "OUT.zarr"]
        )
        secs_per_plane = segmenting["seconds"] / max(done, 1)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    rows = [
        ("baseline: imports + model", baseline),
        (f"read {args.stack_planes // read_step} planes lazily", reading),
        (f"CLI predict, {done} planes", segmenting),
    ]
    peak = max(r["peak_rss_bytes"] for _, r in rows[1:])
    met = peak < GOAL_BYTES
    print()
    print(
        f"peak RSS {peak / GB:.2f} GB = {peak / stack_bytes:.2f} x the "
        f"{stack_bytes / GB:.2f} GB stack "
        f"(goal < {GOAL_BYTES / GB:.1f} GB: {'met' if met else 'missed'})"
    )
    print(
        f"{'step':<28} {'peak RSS GB':>11} {'/ stack':>7} {'ru_maxrss GB':>12} "
        f"{'max polled RSS':>14} {'seconds':>8}"
    )
    for name, r in rows:
        print(
            f"{name:<28} {r['peak_rss_bytes'] / GB:>11.3f} "
            f"{r['peak_rss_bytes'] / stack_bytes:>7.3f} "
            f"{r['ru_maxrss_bytes'] / GB:>12.3f} {r['peak_rss_polled_bytes'] / GB:>14.3f} "
            f"{r['seconds']:>8.1f}"
        )
    print(
        f"segmented {done} of {args.stack_planes} planes "
        f"({'stopped by the benchmark' if stopped else 'ran to the end'}), "
        f"{secs_per_plane:.1f} s per {args.size}^2 plane incl. start-up, small preset, untrained"
    )

    result = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "stack": {
            "format": args.format,
            "shape": [args.stack_planes, args.size, args.size],
            "dtype": "uint8",
            "bytes": stack_bytes,
            "bytes_on_disk": on_disk,
            "write_seconds": write_s,
        },
        "model": "PRESETS['small'] (untrained)",
        "baseline": baseline,
        "read_all_planes": {**reading, "plane_step": read_step},
        "cli_predict": segmenting,
        "peak_rss_bytes": peak,
        "peak_over_stack": peak / stack_bytes,
        "goal_bytes": GOAL_BYTES,
        "goal_met": met,
    }
    return write_json(out_json, result)


if __name__ == "__main__":
    main()
