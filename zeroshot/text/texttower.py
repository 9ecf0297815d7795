"""Exact shortcuts through open_clip's own CLIP text tower: run a batch cut to its longest prompt
instead of 77 tokens, and run a group of prompts' shared prefix once.

Both rewrite what ``open_clip.CLIP.encode_text`` does step by step (token embedding, positional
embedding, transformer with its causal mask, final LayerNorm, end-of-text pooling, projection), so
they are tied to that code: checked against open_clip 3.3.0, the version the test suite installs
(``tests/test_text_trim.py`` compares them with the padded, unshortened encoding, and
``tests/test_families.py`` the whole text side with open_clip's own ``build_zero_shot_classifier``).
They apply only where :func:`trimmable` / :func:`prefix_shareable` say the result cannot change;
every other text tower (SigLIP, Hugging Face towers, CoCa) runs open_clip's own ``encode_text``.
"""

from __future__ import annotations

from typing import Any


def trimmable(model: Any) -> bool:
    """Whether cutting the padding off a text batch leaves the embeddings unchanged.

    True for open_clip's ``CLIP`` text tower: it is causal (each position attends only to earlier
    ones) and reads the end-of-text position, so pad positions after the longest prompt cannot
    influence the result. Towers without a causal mask or that pool differently (SigLIP, Hugging
    Face text models in ``CustomTextCLIP``) are run padded.
    """
    import open_clip

    return (
        type(model) is open_clip.CLIP
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", None) in ("argmax", "eos")
        and getattr(model, "positional_embedding", None) is not None
    )


def encode_trimmed(model: Any, tokens: Any) -> Any:
    """``model.encode_text`` on tokens cut to their longest prompt (see :func:`trimmable`)."""
    from open_clip.transformer import text_global_pool

    length = int((tokens != 0).sum(dim=1).max())
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        x = model.text_projection(x) if hasattr(model.text_projection, "weight") else x @ model.text_projection
    return x


def prefix_shareable(model: Any) -> bool:
    """Whether prompts that start with the same tokens can share those tokens' computation.

    In a causal tower the states of the first P positions depend only on the first P tokens, so a
    template's prefix ("a photo of a") is the same for every class: run it once, and run only the
    rest of each prompt with the prefix's per-layer states as extra keys and values. Needs the
    plain open_clip block (``ResidualAttentionBlock`` with a plain batch-first
    ``nn.MultiheadAttention``); anything else uses :func:`trimmable`'s path.
    """
    import torch
    from open_clip.transformer import ResidualAttentionBlock

    if not trimmable(model):
        return False
    blocks = list(getattr(model.transformer, "resblocks", []))
    return bool(blocks) and all(
        type(b) is ResidualAttentionBlock
        and not hasattr(b, "ln_1_kv")
        and type(b.attn) is torch.nn.MultiheadAttention
        and b.attn.batch_first
        and b.attn._qkv_same_embed_dim
        and b.attn.in_proj_weight is not None
        and b.attn.bias_k is None
        and not b.attn.add_zero_attn
        for b in blocks
    )


def encode_prefixed(model: Any, prefix: Any, suffix: Any) -> Any:
    """``model.encode_text`` of prompts ``prefix + suffix[i]`` (suffix rows end with 0 padding).

    The prefix runs through the blocks once, as a batch of one, leaving its keys and values at
    every layer. Each suffix position then attends to those and to the suffix positions up to
    itself (the suffix's rows of the causal mask), computed as ``nn.MultiheadAttention`` does:
    one in-projection, scaled dot-product attention per head, the out-projection.
    """
    import torch
    import torch.nn.functional as F
    from open_clip.transformer import text_global_pool

    cast_dtype = model.transformer.get_cast_dtype()
    p, s, n = prefix.shape[0], suffix.shape[1], suffix.shape[0]
    pos = model.positional_embedding.to(cast_dtype)
    xp = model.token_embedding(prefix[None]).to(cast_dtype) + pos[:p]
    xs = model.token_embedding(suffix).to(cast_dtype) + pos[p : p + s]
    mask_p = model.attn_mask[:p, :p]
    mask_s = model.attn_mask[p : p + s, : p + s].to(xs.dtype)
    for block in model.transformer.resblocks:
        attn = block.attn
        width, heads = xs.shape[-1], attn.num_heads
        w, b = attn.in_proj_weight, attn.in_proj_bias
        kp, vp = F.linear(block.ln_1(xp), w[width:], None if b is None else b[width:]).chunk(2, dim=-1)
        q, k, v = F.linear(block.ln_1(xs), w, b).chunk(3, dim=-1)
        k = torch.cat([kp.expand(n, -1, -1), k], dim=1)
        v = torch.cat([vp.expand(n, -1, -1), v], dim=1)
        q, k, v = (t.unflatten(-1, (heads, width // heads)).transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_s)
        o = attn.out_proj(o.transpose(1, 2).flatten(2))
        xs = xs + block.ls_1(o)
        xs = xs + block.ls_2(block.mlp(block.ln_2(xs)))
        xp = block(xp, attn_mask=mask_p)
    x = model.ln_final(xs)
    x = text_global_pool(x, suffix, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        x = model.text_projection(x) if hasattr(model.text_projection, "weight") else x @ model.text_projection
    return x


def shared_prefix_length(rows: Any, lengths: Any) -> int:
    """Tokens all ``rows`` start with, leaving at least the last token of the shortest one out."""
    same = (rows == rows[0]).all(dim=0).int()
    common = int(same.cumprod(dim=0).sum())
    return max(0, min(common, int(lengths.min()) - 1))
