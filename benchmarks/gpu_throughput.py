"""GPU throughput in one run on a lent GPU box: the bare model, decoding alone, ``classify`` end to
end and ``zeroshot serve``, each in images/s, and what holds the end-to-end rate below the slower of
decoding and the model.

For each model (random weights of the real architecture: speed does not depend on their values) on
``--images`` 640x480 photo-like JPEGs made here (on every core):

- the bare image tower on device tensors, batch ``--batch``, per precision (fp32 as zeroshot runs it,
  fp16, bf16): loaded by ``zeroshot.model.models.load_model``, timed with CUDA events;
- decoding alone: the Pillow workers (``FileDecoder`` in the decode processes ``classify`` uses,
  every core but one) and the batched decoder (nvJPEG through torchvision, plus the resize and crop
  on the device), bytes already in memory for the latter;
- ``zeroshot classify`` over the folder for each ``--decoder``, and each ``--precision`` for the first
  model (fp16 for the others): images/s from its manifest (ready -> end: decoding and the model,
  not start-up);
- ``zeroshot serve`` (first model only) with 64 concurrent clients sending one image per request.

The GPU, the CPU's model, cores and flags come first. ``--device cpu`` is a dry run of the script's
own logic (tiny counts) for machines without a GPU.

    python benchmarks/gpu_throughput.py [--images 4096] [--models ViT-B-32,ViT-B-16,ViT-L-14]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import DEFAULT_WORK, machine, photo_jpegs, table  # noqa: E402

ZEROSHOT = [sys.executable, "-m", "zeroshot"]
PREPROCESS = "openai"  # the checkpoint files' preprocessing (ViT-L-14's tags disagree: say which)


def checkpoint(work: Path, name: str) -> Path:
    """Random weights of ``name`` (open_clip's own init), as safetensors, made once."""
    path = work / f"{name}-random.safetensors"
    if not path.exists():
        import open_clip
        import torch
        from safetensors.torch import save_file

        torch.manual_seed(0)
        model = open_clip.create_model(name)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def bare(name: str, ckpt: Path, device: str, batch: int, rounds: int) -> dict[str, float]:
    """The image tower alone on device tensors: images/s per precision."""
    import torch

    from zeroshot.model.models import load_model, resolve_spec

    out = {}
    for precision in ("fp32", "fp16", "bf16"):
        loaded = load_model(resolve_spec(name, str(ckpt), PREPROCESS), device, precision)
        size = loaded.model.visual.image_size
        h, w = size if isinstance(size, (tuple, list)) else (size, size)
        x = torch.randn(batch, 3, h, w, device=device, dtype=loaded.input_dtype)
        with torch.inference_mode():
            for _ in range(3):
                loaded.model.encode_image(x)
            sync(device)
            began = time.perf_counter()
            for _ in range(rounds):
                loaded.model.encode_image(x)
            sync(device)
        out[precision] = batch * rounds / (time.perf_counter() - began)
        del loaded, x
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def decode_rates(name: str, ckpt: Path, photos: list[Path], device: str, workers: int, batch: int) -> dict[str, float]:
    """Decoding alone: Pillow in forked workers, and (on CUDA) the batched nvJPEG decoder."""
    from zeroshot.image.decoding import FileDecoder, Jpeg, decode_in_worker, process_pool, split_preprocess
    from zeroshot.image.images import Input
    from zeroshot.model.models import load_model, resolve_spec

    loaded = load_model(resolve_spec(name, str(ckpt), PREPROCESS), "cpu")
    split = split_preprocess(loaded.preprocess)
    chunks = [[Input(str(p)) for p in photos[i : i + 16]] for i in range(0, len(photos), 16)]
    out = {}
    for kind, draft in (("pillow", False), ("pillow-draft", True)):  # --jpeg-draft: libjpeg's DCT scaling
        with process_pool(FileDecoder(loaded.preprocess, split, jpeg_draft=draft), workers) as pool:
            list(pool.map(decode_in_worker, chunks[: workers * 2]))  # the workers started and warm
            began = time.perf_counter()
            done = sum(len(r) for r in pool.map(decode_in_worker, chunks))
            out[kind] = done / (time.perf_counter() - began)
    if device.startswith("cuda") and split is not None and split.resize is not None:
        from zeroshot.image.tensordecode import BatchJpegDecoder

        nv = BatchJpegDecoder(split.pil_stage, device)
        datas = [Jpeg(p.read_bytes(), 1) for p in photos]
        nv(datas[:batch])
        sync(device)
        began = time.perf_counter()
        for i in range(0, len(datas), batch):
            nv(datas[i : i + batch])
        sync(device)
        out["batched"] = len(datas) / (time.perf_counter() - began)
    return out


def classify_rate(args: list[str], manifest: Path, env: dict[str, str]) -> tuple[float, dict]:
    cmd = [*ZEROSHOT, "classify", *args, "-q", "-o", str(manifest.with_suffix(".jsonl")), "--manifest", str(manifest)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"classify failed ({done.returncode}): {done.stderr[-2000:]}")
    m = json.loads(manifest.read_text())
    return m["records"] / (m["seconds"]["total"] - m["seconds"]["ready"]), m


def serve_rate(name: str, ckpt: Path, photos: list[Path], device: str, env: dict[str, str], requests: int) -> str:
    """64 clients, one image per request, against a real ``zeroshot serve`` on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [*ZEROSHOT, "serve", "-m", name, "-p", str(ckpt), "--preprocess", PREPROCESS, "--device", device,
           "--port", str(port),
           "--max-batch", "256", "--max-queue", "4096", "--max-wait-ms", "10"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            if proc.poll() is not None:
                return f"the server exited: {proc.stderr.read()[-500:]}"  # type: ignore[union-attr]
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/readyz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        bodies = []
        for p in photos[:256]:
            b = uuid.uuid4().hex
            body = (
                f'--{b}\r\nContent-Disposition: form-data; name="dataset"\r\n\r\ncifar10\r\n'
                f'--{b}\r\nContent-Disposition: form-data; name="image"; filename="{p.name}"\r\n\r\n'
            ).encode()
            bodies.append((body + p.read_bytes() + f"\r\n--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"))
        counter, lock, bad = iter(range(requests)), threading.Lock(), []

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                body, ctype = bodies[i % len(bodies)]
                conn.request("POST", "/v1/classify", body=body, headers={"Content-Type": ctype})
                r = conn.getresponse()
                if r.status != 200:
                    bad.append(r.status)
                r.read()

        threads = [threading.Thread(target=client) for _ in range(64)]
        began = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        rate = requests / (time.perf_counter() - began)
        return f"{rate:.0f} images/s ({requests} requests, 64 clients{', refused: ' + str(len(bad)) if bad else ''})"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def profile(name: str, ckpt: Path, photos: list[Path], device: str, decoder: str, batch: int) -> str:
    """Where one in-process run through the library spends its time: waiting for decoded batches,
    preparing a batch (the copy to the device, nvJPEG), the tower (synchronised), the rest."""
    import zeroshot
    from zeroshot.towers import pipeline

    spent = {"wait for decode": 0.0, "prepare": 0.0, "tower": 0.0}
    real_decoded, real_prepare, real_finish = (pipeline.ImageEncoder._decoded, pipeline.ImageEncoder._prepare,
                                               pipeline.ImageEncoder._finish)  # fmt: skip

    def decoded(self, inputs):  # type: ignore[no-untyped-def]
        it = real_decoded(self, inputs)
        while True:
            began = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                spent["wait for decode"] += time.perf_counter() - began
            yield item

    def timed(key, real):  # type: ignore[no-untyped-def]
        def run(self, arg):  # type: ignore[no-untyped-def]
            began = time.perf_counter()
            out = real(self, arg)
            sync(device)
            spent[key] += time.perf_counter() - began
            return out

        return run

    pipeline.ImageEncoder._decoded = decoded  # type: ignore[method-assign]
    pipeline.ImageEncoder._prepare = timed("prepare", real_prepare)  # type: ignore[method-assign]
    pipeline.ImageEncoder._finish = timed("tower", real_finish)  # type: ignore[method-assign]
    try:
        zs = zeroshot.Zeroshot(model=name, pretrained=str(ckpt), preprocess=PREPROCESS, device=device, precision="fp16")
        text = zs.text_classifier(zeroshot.resolve_prompt_set(dataset="cifar10"))
        list(zs.classify(photos[:batch], text, batch_size=batch, decoder=decoder))  # warm
        for key in spent:
            spent[key] = 0.0
        began = time.perf_counter()
        n = sum(1 for _ in zs.classify(photos, text, batch_size=batch, decoder=decoder))
        total = time.perf_counter() - began
    finally:
        pipeline.ImageEncoder._decoded, pipeline.ImageEncoder._prepare = real_decoded, real_prepare  # type: ignore[method-assign]
        pipeline.ImageEncoder._finish = real_finish  # type: ignore[method-assign]
    parts = ", ".join(f"{k} {v / total:.0%}" for k, v in spent.items())
    return f"profile {name} fp16 {decoder}: {n / total:,.0f} images/s in-process; of the time: {parts}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--models", default="ViT-B-32")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--serve-requests", type=int, default=4096)
    parser.add_argument("--decoders", default="pillow,pillow-draft,batched")
    parser.add_argument("--precisions", default="fp32,fp16,bf16")
    args = parser.parse_args()
    print(machine(), flush=True)
    import torch

    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: nothing to measure here")
        return
    cores = len(os.sched_getaffinity(0))
    work = DEFAULT_WORK / "gpu"
    began = time.perf_counter()
    photos = photo_jpegs(work / "photos", args.images, workers=cores)
    print(f"{len(photos)} 640x480 JPEGs in {time.perf_counter() - began:.1f} s", flush=True)
    env = dict(os.environ, ZEROSHOT_CACHE_DIR=str(work / "cache"))
    rows, summary = [], []
    for index, name in enumerate(args.models.split(",")):
        first = index == 0
        ckpt = checkpoint(work, name)
        rounds = 20 if device.startswith("cuda") else 1
        model = bare(name, ckpt, device, args.batch if device.startswith("cuda") else 4, rounds)
        decode = decode_rates(name, ckpt, photos, device, max(1, cores - 1), args.batch)
        print(f"{name}: bare " + ", ".join(f"{k} {v:,.0f}" for k, v in model.items()) + " images/s; decode only "
              + ", ".join(f"{k} {v:,.0f}" for k, v in decode.items()) + " images/s", flush=True)  # fmt: skip
        base = ["-m", name, "-p", str(ckpt), "--preprocess", PREPROCESS, "--dataset", "cifar10", "--device", device,
                "-b", str(args.batch)]  # fmt: skip
        subprocess.run([*ZEROSHOT, "build-prompts", *base[:8], "--device", device, "-q"], env=env, check=True,
                       capture_output=True)  # fmt: skip
        for decoder in args.decoders.split(","):
            if decoder == "batched" and "batched" not in decode:
                continue
            # every precision for the first model; fp16 (what auto runs on CUDA) for the others
            for precision in args.precisions.split(",") if first else ["fp16"]:
                flags = ["--decoder", "pillow", "--jpeg-draft"] if decoder == "pillow-draft" else ["--decoder", decoder]
                rate, m = classify_rate([str(work / "photos"), *base, "--precision", precision, *flags],
                                        work / f"run-{name}-{decoder}-{precision}.json", env)  # fmt: skip
                limit = min(model.get(precision, model["fp32"]), decode[decoder])
                rows.append([name, decoder, precision, f"{rate:,.0f}", f"{limit:,.0f}", f"{rate / limit:.2f}",
                             f"{m['seconds']['ready']:.1f}"])  # fmt: skip
                print(" | ".join(rows[-1]), flush=True)
        if first:
            for decoder in ("pillow", "batched") if device.startswith("cuda") else ("pillow",):
                summary.append(profile(name, ckpt, photos, device, decoder, args.batch))
                print(summary[-1], flush=True)
            summary.append(f"serve {name} fp16 default decoder: "
                           + serve_rate(name, ckpt, photos, device, env, args.serve_requests))  # fmt: skip
            print(summary[-1], flush=True)
    print(table(rows, ["model", "decoder", "precision", "classify images/s", "min(bare, decode)", "ratio",
                       "start-up s"]))  # fmt: skip
    for line in summary:
        print(line)


if __name__ == "__main__":
    main()
