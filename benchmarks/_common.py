"""Shared pieces of the benchmark scripts: test images, a random-weights ViT-B-32, a table printer.

No model hub is reachable here, so speed is measured on random weights of the real architecture
(speed does not depend on the values of the weights); images are generated photo-like JPEGs.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

DEFAULT_WORK = Path(os.environ.get("ZEROSHOT_BENCH_DIR", "/tmp/zeroshot-bench"))


def photo_jpegs(
    folder: Path, n: int, size: tuple[int, int] = (640, 480), seed: int = 0, workers: int = 1
) -> list[Path]:
    """``n`` deterministic photo-sized JPEGs (quality 90, ~110 kB each): smooth colour fields,
    sensor-like noise and a dark disc, so they compress and decode like photographs, not flat fills.
    Made once (a file already there is kept), by ``workers`` processes."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"photo{i:05d}.jpg" for i in range(n)]
    todo = [(p, size, seed * 1_000_003 + i) for i, p in enumerate(paths) if not p.exists()]
    if workers > 1 and len(todo) > workers:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_photo_jpeg, todo, chunksize=16))
    else:
        for item in todo:
            _photo_jpeg(item)
    return paths


def _photo_jpeg(item: tuple[Path, tuple[int, int], int]) -> None:
    import numpy as np
    from PIL import Image

    path, (w, h), seed = item
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    low = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    a = np.asarray(low).astype(np.float32) + rng.normal(0, 12, (h, w, 3))
    cx, cy, r = rng.integers(w // 6, 5 * w // 6), rng.integers(h // 5, 4 * h // 5), rng.integers(h // 12, h // 3)
    a[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] *= 0.5
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(tmp, format="JPEG", quality=90)
    os.replace(tmp, path)


def random_checkpoint(work: Path, arch: str = "ViT-B-32") -> Path:
    """A random-weights checkpoint of ``arch`` (a plain state_dict), made once and reused."""
    path = work / f"{arch}-random.pt"
    if not path.exists():
        import numpy as np
        import open_clip
        import torch

        torch.manual_seed(0)
        model = open_clip.create_model(arch)
        with torch.no_grad():
            model.logit_scale.fill_(np.log(100.0))
        work.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    return path


def cpu() -> str:
    """The CPU's model name and the flags that decide its speed: compare figures only within a run."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8"]
    have = [f for f in wanted if f in flags]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"CPU: {name}, {cores} cores; flags: {' '.join(have) or 'none of ' + ', '.join(wanted)}"


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu()}; {platform.machine()}, torch {torch.__version__} ({torch.get_num_threads()} threads), {gpu}"


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])
