"""The CPU engine's text tower: CLIP's own text transformer exported to ONNX once (dynamic batch
and length, so batches cut to their longest prompt run as torch runs them), checked against torch
and cached beside the image tower (:mod:`zeroshot.towers.onnxexport`).

Only the plain open_clip text tower is exported (:func:`zeroshot.text.texttower.prefix_shareable`: causal
mask, end-of-text pooling, plain attention blocks). Its blocks are written out here with
shape-free operations (the exporter bakes ``nn.MultiheadAttention``'s sequence length into the
graph); the result is checked against :func:`~zeroshot.text.texttower.encode_trimmed`. Other text towers
(SigLIP's, Hugging Face's) stay on torch, with a note: the text side runs once per label set and
is cached, so it costs a first run, not every run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _text_module(model: Any) -> Any:
    import torch
    import torch.nn.functional as F
    from open_clip.transformer import text_global_pool

    class TextTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, tokens: Any) -> Any:
            m = self.model
            n = tokens.shape[1]
            x = m.token_embedding(tokens) + m.positional_embedding[:n]
            mask = m.attn_mask[:n, :n]
            for block in m.transformer.resblocks:  # nn.MultiheadAttention's arithmetic, shape-free
                attn = block.attn
                width, heads = x.shape[-1], attn.num_heads
                q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
                q, k, v = (t.unflatten(-1, (heads, width // heads)).transpose(1, 2) for t in (q, k, v))
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                x = x + block.ls_1(attn.out_proj(o.transpose(1, 2).flatten(2)))
                x = x + block.ls_2(block.mlp(block.ln_2(x)))
            x = m.ln_final(x)
            x = text_global_pool(x, tokens, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))
            proj = m.text_projection
            return x if proj is None else (proj(x) if hasattr(proj, "weight") else x @ proj)

    return TextTower().eval()


def _sample_tokens(loaded: Any, texts: list[str]) -> Any:
    tokens = loaded.tokenizer(texts)
    return tokens[:, : int((tokens != 0).sum(dim=1).max())]


def build_text(loaded: Any, path: Path) -> dict[str, Any]:
    """Export the text tower to ``path`` and check it against torch on batches of 1 and 3 prompts
    of other lengths than the export's: the agreement figures, or ``{"reason": ...}``."""
    import warnings

    import numpy as np
    import torch

    from ..text.texttower import encode_trimmed, prefix_shareable
    from .onnxexport import FP32_COSINE, FP32_RELATIVE, OPSET
    from .runtimes import OnnxTower

    if not prefix_shareable(loaded.model):
        return {"reason": "only CLIP's own text transformer is exported (this one is another kind)"}
    example = _sample_tokens(loaded, ["a photo of a cat.", "a blurry photo of the small dog."])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _text_module(loaded.model), (example,), str(path), opset_version=OPSET, dynamo=False,
            input_names=["tokens"], output_names=["features"],
            dynamic_axes={"tokens": {0: "batch", 1: "length"}, "features": {0: "batch"}},
        )  # fmt: skip
    session = OnnxTower(path, split=None).session
    worst_rel, worst_cos = 0.0, 1.0
    for texts in (["a"], ["a photo of many red and white tabby cats on a long sofa.", "x", "a photo."]):
        tokens = _sample_tokens(loaded, texts)
        with torch.inference_mode():
            ref = encode_trimmed(loaded.model, tokens).float().numpy().astype(np.float64)
        got = session.run(None, {"tokens": tokens.numpy()})[0].astype(np.float64)
        worst_rel = max(worst_rel, float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12)))
        cos = (got * ref).sum(1) / np.maximum(np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1), 1e-12)
        worst_cos = min(worst_cos, float(cos.min()))
    figures: dict[str, Any] = {"max_relative_difference": worst_rel, "min_cosine": worst_cos}
    if worst_rel > FP32_RELATIVE or worst_cos < FP32_COSINE:
        figures["reason"] = f"its exported text tower disagrees with torch (cosine {worst_cos:.6f})"
    return figures


class OnnxTextTower:
    """The exported text tower in ONNX Runtime: token rows (cut to their longest) -> raw features."""

    def __init__(self, path: Any, threads: int = 0) -> None:
        from .runtimes import OnnxTower

        self.session = OnnxTower(path, split=None, threads=threads).session

    def __call__(self, tokens: Any) -> Any:
        import torch

        return torch.from_numpy(self.session.run(None, {"tokens": tokens.cpu().numpy()})[0])


def text_engine(loaded: Any, loading: Any = None) -> OnnxTextTower | None:
    """The loaded model's text tower in ONNX Runtime (exported once, cached), or None: it runs on
    torch, and a note says why (once per model, when the text side is built)."""
    from ..model.weightfiles import image_cache_key
    from .onnxexport import find_or_make

    found = find_or_make(loaded, image_cache_key(loaded), "fp32", "text", build=build_text, loading=loading)
    if isinstance(found, str):
        if loading is not None:
            loading.notes([f"{loaded.spec.label}: the text tower runs on torch, not ONNX Runtime: {found}"])
        return None
    return OnnxTextTower(found[0])
