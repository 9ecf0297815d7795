"""A fake model for tests about options and records, not numbers: no open_clip load, no weights.

:func:`fake_loader` stands in for :func:`zeroshot.model.models.load_model`. Its model scores an image by
its mean red, green and blue and a prompt by which colour word it names, so a test can predict
every record: a red image is "red". It has the parts the image core and the text side use
(``encode_image``, ``encode_text``, ``logit_scale``, a torchvision preprocessing, a tokenizer).
"""

from __future__ import annotations

from typing import Any

COLOURS = ("red", "green", "blue")


class FakeTokenizer:
    """One row per text: token 1, 2 or 3 for the first colour word it holds, 0 for none."""

    context_length = 77

    def __call__(self, texts: list[str]) -> Any:
        import torch

        rows = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            words = text.lower().replace(".", " ").replace(",", " ").split()
            found = next((COLOURS.index(w) + 1 for w in words if w in COLOURS), 0)
            rows[i, 0] = 49406  # start of text, as CLIP's
            rows[i, 1] = found + 1  # never a pad
        return rows


def fake_model() -> Any:
    import torch

    class FakeCLIP(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.logit_scale = torch.nn.Parameter(torch.tensor(float(torch.log(torch.tensor(5.0)))))  # soft: scores < 1

        def encode_image(self, x: Any) -> Any:  # [N, 3, H, W] normalized pixels -> mean per channel
            return x.float().mean(dim=(2, 3))

        def encode_text(self, tokens: Any) -> Any:  # the colour named -> its axis; none -> all equal
            out = torch.full((tokens.shape[0], 3), 0.1)
            for i, t in enumerate(tokens[:, 1].tolist()):
                if t >= 2:
                    out[i, t - 2] = 1.0
            return out

    return FakeCLIP().eval()


def fake_loader(spec: Any, device: str = "cpu", precision: str = "fp32", downloads: Any = None) -> Any:
    from torchvision import transforms

    from zeroshot.model.models import LoadedModel

    preprocess = transforms.Compose(
        [transforms.Resize(8), transforms.CenterCrop(8), transforms.ToTensor(),
         transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]
    )  # fmt: skip
    return LoadedModel(spec=spec, model=fake_model(), preprocess=preprocess, tokenizer=FakeTokenizer(), device="cpu")
