"""A local stand-in for the Hugging Face Hub's file API, and random weights published on it.

The real Hub answers ``HEAD``/``GET /{repo}/resolve/{revision}/{file}`` with the file, its ETag and
the repository's commit (``X-Repo-Commit``); a file missing from an existing repository is a 404
that still carries the commit header (``X-Error-Code: EntryNotFound``), which is what lets
``huggingface_hub`` remember the absence and work offline later; an unknown repository is a 404
with ``X-Error-Code: RepoNotFound``. This server does the same for files published into a folder,
so ``HF_ENDPOINT`` pointed at it makes open_clip run its real download code, offline.

``break_next(repo, file)`` makes the next GET of that file stop half-way (a dropped connection).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import math
import os
import re
import socket
import threading
from pathlib import Path
from typing import Any

PATH = re.compile(r"^/(?P<repo>.+?)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")


class StandInHub:
    """Serves ``root/<org>/<repo>/<file>`` at ``/<org>/<repo>/resolve/<rev>/<file>``."""

    def __init__(self, root: Path, host: str = "127.0.0.1") -> None:
        """``host``: the loopback address to listen on (``::1`` for an IPv6 endpoint)."""
        self.root = root
        self.broken: dict[tuple[str, str], int] = {}
        self.failing: set[tuple[str, str]] = set()
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                hub.answer(self, body=False)

            def do_GET(self) -> None:
                hub.answer(self, body=True)

        class Server(http.server.ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        self.httpd = Server((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # --- publishing ---

    def put(self, repo: str, filename: str, data: bytes) -> None:
        path = self.root / repo / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def commit(self, repo: str) -> str:
        """A repository's commit: a hash of its file names and sizes (changes when a file does)."""
        folder = self.root / repo
        h = hashlib.sha1(repo.encode())
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                h.update(f"{p.relative_to(folder)}\0{p.stat().st_size}\0".encode())
        return h.hexdigest()

    def break_next(self, repo: str, filename: str, times: int = 1, then_fail: bool = False) -> None:
        """Cut the next ``times`` GETs of this file off half-way (clients retry and resume); with
        ``then_fail``, answer every later GET of it with a 500 until :attr:`failing` is cleared."""
        self.broken[(repo, filename)] = times
        if then_fail:
            self.failing.add((repo, filename))

    # --- serving ---

    def find_repo(self, rest: str) -> tuple[str, str] | None:
        """(repo id, what follows it) for a path below ``/api/models/``: ``org/name`` or ``name``."""
        parts = rest.split("/")
        for n in (2, 1):
            repo = "/".join(parts[:n])
            if (
                len(parts) >= n
                and (self.root / repo).is_dir()
                and not (n == 1 and len(parts) > 1 and (self.root / "/".join(parts[:2])).is_dir())
            ):
                return repo, "/".join(parts[n:])
        return None

    def api(self, req: http.server.BaseHTTPRequestHandler, body: bool) -> None:
        """``/api/models/{repo}[/revision/{rev}]`` (model info) and ``/api/models/{repo}/tree/{rev}/{path}``."""
        import json

        found = self.find_repo(req.path.split("?", 1)[0][len("/api/models/") :])
        if found is None:
            self.send(req, 404, {"X-Error-Code": "RepoNotFound"}, b'{"error": "Repository not found"}', body)
            return
        repo, rest = found
        folder, commit = self.root / repo, self.commit(repo)
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        head = {"X-Repo-Commit": commit, "Content-Type": "application/json"}
        if rest.startswith("tree/"):
            sub = rest.split("/", 2)[2] if rest.count("/") >= 2 else ""
            target = folder / sub
            if not target.is_dir():
                self.send(req, 404, {**head, "X-Error-Code": "EntryNotFound"}, b'{"error": "not found"}', body)
                return
            entries = [
                {"type": "directory" if p.is_dir() else "file", "path": str(p.relative_to(folder)),
                 "size": p.stat().st_size if p.is_file() else 0, "oid": hashlib.sha1(str(p).encode()).hexdigest()}
                for p in sorted(target.iterdir())
            ]  # fmt: skip
            self.send(req, 200, head, json.dumps(entries).encode(), body)
            return
        info = {
            "id": repo, "modelId": repo, "sha": commit, "private": False, "gated": False, "disabled": False,
            "siblings": [{"rfilename": str(p.relative_to(folder))} for p in files], "tags": [],
        }  # fmt: skip
        self.send(req, 200, head, json.dumps(info).encode(), body)

    def answer(self, req: http.server.BaseHTTPRequestHandler, body: bool) -> None:
        self.requests.append((req.command, req.path))
        if req.path.startswith("/api/models/"):
            self.api(req, body)
            return
        m = PATH.match(req.path.split("?", 1)[0])
        if not m or not (self.root / m["repo"]).is_dir():
            self.send(req, 404, {"X-Error-Code": "RepoNotFound"}, b"Repository not found", body)
            return
        repo, rev, name = m["repo"], m["rev"], m["file"]
        commit = self.commit(repo)
        if rev not in ("main", commit):
            self.send(req, 404, {"X-Error-Code": "RevisionNotFound"}, b"Revision not found", body)
            return
        path = self.root / repo / name
        if not path.is_file():
            headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}
            self.send(req, 404, headers, b"Entry not found", body)
            return
        size = path.stat().st_size
        # The Hub's ETag of a large file is its sha256; any stable id of the content does for a
        # client, and hashing gigabytes on every HEAD would cost more than serving them.
        etag = hashlib.sha256(f"{repo}/{name}:{size}:{path.stat().st_mtime_ns}".encode()).hexdigest()
        headers = {"X-Repo-Commit": commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        start = 0
        rng = req.headers.get("Range")
        if rng and rng.startswith("bytes=") and rng[6:].split("-")[0].isdigit():
            start = min(int(rng[6:].split("-")[0]), size)
        if body and not self.broken.get((repo, name)) and (repo, name) in self.failing:
            self.send(req, 500, {"X-Repo-Commit": commit}, b"Internal Error", body)
            return
        cut = bool(body and self.broken.get((repo, name)))
        if cut:
            self.broken[(repo, name)] -= 1
        req.send_response(206 if start else 200)
        if start:
            headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        for k, v in {**headers, "Content-Length": str(size - start)}.items():
            req.send_header(k, v)
        req.end_headers()
        if not body:
            return
        with _suppress(), path.open("rb") as f:  # streamed: a model file may be gigabytes
            f.seek(start)
            left = (size - start) // 2 if cut else size - start
            while left > 0:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    break
                req.wfile.write(chunk)
                left -= len(chunk)
            req.wfile.flush()
        if cut:  # a dropped connection half-way through the file
            req.close_connection = True
            with _suppress():
                req.connection.shutdown(2)

    @staticmethod
    def send(req: Any, code: int, headers: dict[str, str], data: bytes, body: bool) -> None:
        req.send_response(code)
        for k, v in headers.items():
            req.send_header(k, v)
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        if body:
            with _suppress():
                req.wfile.write(data)


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> bool:
        return exc[0] is not None and issubclass(exc[0], OSError)


def hub_env(hub: StandInHub, hf_home: Path) -> dict[str, str]:
    """The environment for a process that should download from ``hub`` into its own cache."""
    env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1")
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        env.pop(var, None)
    env["HF_HUB_DISABLE_XET"] = "1"
    return env


def random_state(name: str, tag: str | None = None, seed: int = 0, hub: StandInHub | None = None) -> dict[str, Any]:
    """A random-weights state dict of the architecture ``name`` (with the tag's QuickGELU setting),
    in fp16 (half the bytes; every loader reads the same values), with a sharp learned temperature.

    The model is built on the meta device (no memory, no initialisation: seconds saved per model)
    and each entry filled from a seeded generator: small normal weights, batch-norm variances of 1.
    A Hugging Face text tower is built from the ``config.json`` published on ``hub`` (read from its
    folder: this process has no ``HF_ENDPOINT``).
    """
    import open_clip
    import torch

    cfg = open_clip.get_pretrained_cfg(name, tag) if tag else {}
    kwargs: dict[str, Any] = {}
    text = open_clip.get_model_config(name)["text_cfg"]
    if "hf_model_name" in text:
        assert hub is not None, f"{name} has a Hugging Face text tower: publish its config on a hub first"
        local = str(hub.root / text["hf_model_name"])
        kwargs["text_cfg"] = {**text, "hf_model_name": local, "hf_model_pretrained": False}
    with torch.device("meta"):
        model = open_clip.create_model(
            name, pretrained=None, force_quick_gelu=bool(cfg.get("quick_gelu")), device="meta", **kwargs
        )
    gen = torch.Generator().manual_seed(seed)
    # One pool of normal values, read from a random offset per entry: drawing hundreds of millions
    # of fresh values would cost more than the rest of publishing a model together.
    pool = (torch.randn(1 << 22, generator=gen) * 0.05).half()
    state: dict[str, Any] = {}
    for key, meta in model.state_dict().items():
        if not meta.is_floating_point():
            state[key] = torch.zeros(meta.shape, dtype=meta.dtype)
        elif key.endswith("running_var"):
            state[key] = torch.ones(meta.shape, dtype=torch.float16)
        elif key == "logit_scale":
            state[key] = torch.full(meta.shape, math.log(100.0), dtype=torch.float16)  # trained-looking
        else:
            n, start = meta.numel(), int(torch.randint(0, 1 << 21, (1,), generator=gen))
            reps = (start + n) // pool.numel() + 1
            flat = pool.repeat(reps) if reps > 1 else pool
            state[key] = flat[start : start + n].reshape(meta.shape).clone()
    return state


def publish_tag(hub: StandInHub, name: str, tag: str, seed: int = 0) -> tuple[str, str, dict[str, Any]]:
    """Random weights for ``name``/``tag`` at the repository and file the tag names, as the Hub
    holds them: ``open_clip_model.safetensors`` where open_clip asks for its default file name
    (it tries that before ``open_clip_pytorch_model.bin``), else the named file (a ``.bin`` as a
    torch pickle of tensors, whose ``.safetensors`` twin is then absent: a 404 with the commit)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    cfg = open_clip.get_pretrained_cfg(name, tag)
    repo, filename = os.path.split(cfg["hf_hub"])
    publish_text_tower(hub, name)
    state = random_state(name, tag, seed, hub)
    target = hub.root / repo / (filename or "open_clip_model.safetensors")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix == ".safetensors":
        save_file(state, str(target))
    else:
        torch.save(state, target)
    filename = target.name
    hub.put(repo, "README.md", f"random weights standing in for {name} ({tag})\n".encode())
    # As open_clip's push_to_hf_hub writes it: what ``hf-hub:`` and ``local-dir:`` loading reads.
    preprocess = {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg}
    config = {"model_cfg": open_clip.get_model_config(name), "preprocess_cfg": preprocess}
    hub.put(repo, "open_clip_config.json", json.dumps(config).encode())
    return repo, filename, state


CORPUS = [
    "itap of a cat.", "a bad photo of the dog.", "a origami car.", "a photo of the large tree.",
    "a dog in a video game.", "art of the cat.", "a photo of the small car.", "a photo of a tree, a type of plant.",
    "the quick brown fox jumps over the lazy dog", "abcdefghijklmnopqrstuvwxyz 0123456789 .,;:!?'-",
]  # fmt: skip


ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0-3, as in RoBERTa, XLM-R, XLM-V and NLLB


def tokenizer_kind(repo: str) -> str:
    """Which kind of vocabulary the real repository holds."""
    if repo.startswith(("xlm-roberta", "facebook/xlm-v", "facebook/nllb")):
        return "xlmr"
    if repo.startswith("roberta"):
        return "bytelevel"
    if "bert" in repo:
        return "wordpiece"
    return "sentencepiece"


def tokenizer_files(kind: str, context: int) -> dict[str, bytes]:
    """A small tokenizer of the given kind, trained here with the ``tokenizers`` library, as the
    files ``transformers.AutoTokenizer`` reads: ``tokenizer.json`` and ``tokenizer_config.json``.

    ``sentencepiece``: a Unigram model with T5's special tokens and an end-of-text token appended
    (SigLIP's vocabularies); ``wordpiece``: BERT-style, lower-cased, ``[CLS] ... [SEP]`` (CLIPA's
    ``bert-base-uncased``); ``xlmr``: Unigram with ``<s> ... </s>`` and RoBERTa's special ids (XLM-R,
    XLM-V, NLLB); ``bytelevel``: byte-level BPE with the same specials (RoBERTa). Small vocabularies:
    the ids stay inside any real model's embedding.
    """
    import json

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if kind in ("sentencepiece", "xlmr"):
        specials = ["<pad>", "</s>", "<unk>"] if kind == "sentencepiece" else ROBERTA_SPECIALS
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=200, special_tokens=specials, unk_token="<unk>")
        tok.train_from_iterator(CORPUS, trainer)
        config = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    elif kind == "bytelevel":
        specials = ROBERTA_SPECIALS
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
        tok.train_from_iterator(CORPUS, trainer)
        config = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    elif kind == "wordpiece":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials))
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
        )
        config = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                  "mask_token": "[MASK]", "do_lower_case": True}  # fmt: skip
    else:
        raise ValueError(kind)
    if kind == "sentencepiece":
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
        )
    elif kind in ("xlmr", "bytelevel"):
        assert [tok.token_to_id(t) for t in specials] == [0, 1, 2, 3]
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
        )
        config["bos_token"] = "<s>"
    config.update({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": context})
    return {"tokenizer.json": tok.to_str().encode(), "tokenizer_config.json": json.dumps(config).encode()}


def publish_tokenizer(hub: StandInHub, name: str) -> str | None:
    """The Hugging Face tokenizer ``name``'s config names, published where it will be looked for."""
    import open_clip

    text = open_clip.get_model_config(name)["text_cfg"]
    repo = text.get("hf_tokenizer_name")
    if not repo:
        return None
    for filename, data in tokenizer_files(tokenizer_kind(repo), int(text.get("context_length") or 77)).items():
        hub.put(repo, filename, data)
    return repo


# Hugging Face text towers as ``config.json`` files: the real model classes, scaled down (two layers,
# 64 wide) so that a test builds and runs them in moments; special-token ids as the tokenizers above.
TEXT_TOWERS: dict[str, dict[str, Any]] = {
    "roberta": {"model_type": "roberta", "architectures": ["RobertaModel"]},
    "xlm-roberta": {"model_type": "xlm-roberta", "architectures": ["XLMRobertaModel"]},
    "nllb": {
        "model_type": "m2m_100", "architectures": ["M2M100ForConditionalGeneration"], "d_model": 64,
        "encoder_layers": 2, "decoder_layers": 1, "encoder_attention_heads": 2, "decoder_attention_heads": 2,
        "encoder_ffn_dim": 128, "decoder_ffn_dim": 128, "scale_embedding": True, "is_encoder_decoder": True,
        "decoder_start_token_id": 2,
    },
}  # fmt: skip
BERT_LIKE = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
             "type_vocab_size": 1, "layer_norm_eps": 1e-5}  # fmt: skip


def publish_text_tower(hub: StandInHub, name: str) -> str | None:
    """The ``config.json`` of the Hugging Face text tower that ``name``'s config names, if any."""
    import open_clip

    text = open_clip.get_model_config(name)["text_cfg"]
    repo = text.get("hf_model_name")
    if not repo:
        return None
    family = "nllb" if "nllb" in repo else "xlm-roberta" if "xlm-roberta" in repo else "roberta"
    config = {**({} if family == "nllb" else BERT_LIKE), **TEXT_TOWERS[family]}
    # 77 tokens plus RoBERTa's offset of padding_idx + 1 in its position ids.
    config.update(vocab_size=320, max_position_embeddings=128, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    hub.put(repo, "config.json", json.dumps(config).encode())
    return repo
