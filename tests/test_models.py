"""Model specs, weight loading through open_clip's factory, and its failures."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from zeroshot.base.errors import ModelLoadError, UsageError
from zeroshot.cli import app
from zeroshot.model.models import BUNDLED_NAME, load_model, resolve_spec

from .conftest import ARCH, run_cli

# RFC 2606 reserves .invalid: it never resolves, so these tests see "no network" everywhere.
OFFLINE = {"HF_ENDPOINT": "https://hub.invalid", "HF_HOME": "", "HF_HUB_OFFLINE": ""}


@pytest.fixture
def offline_env(tmp_path):
    return {**OFFLINE, "HF_HOME": str(tmp_path / "hf-home")}


def test_spec_defaults_and_environment(monkeypatch, checkpoint):
    assert resolve_spec() == resolve_spec("ViT-B-32", "openai")
    assert resolve_spec().kind == "tag"
    monkeypatch.setenv("ZEROSHOT_MODEL", ARCH)
    monkeypatch.setenv("ZEROSHOT_PRETRAINED", str(checkpoint))
    spec = resolve_spec()
    assert (spec.model, spec.pretrained, spec.kind) == (ARCH, str(checkpoint), "file")
    assert resolve_spec("RN50").pretrained == "openai"  # env weights belong to the env model
    assert resolve_spec("hf-hub:org/repo").kind == "hf-hub"
    with pytest.raises(UsageError, match="does not apply"):
        resolve_spec("hf-hub:org/repo", "openai")
    with pytest.raises(UsageError, match="no 'openai' weights"):
        resolve_spec("ViT-B-16-SigLIP")


def one_line_error(proc):
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("zeroshot: error: ")
    return lines[0]


def test_default_model_without_network_is_one_line_exit_1(offline_env, image_dir):
    proc = run_cli("classify", str(image_dir / "a.png"), "--label", "cat", "--label", "dog", env_extra=offline_env)
    assert proc.returncode == 1
    line = one_line_error(proc)
    assert "ViT-B-32 (openai)" in line and "no network" in line and "--pretrained FILE" in line
    assert proc.stdout == ""


def test_hf_hub_without_network_is_one_line_exit_1(offline_env):
    proc = run_cli("build-prompts", "-m", "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "--label", "cat",
                   env_extra=offline_env)  # fmt: skip
    assert proc.returncode == 1
    assert "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in one_line_error(proc)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["-m", "ViT-B-32", "-p", "laion9000"], "unknown pretrained tag 'laion9000' for ViT-B-32; known tags: openai,"),
        (["-m", ARCH, "-p", "laion9000"], "ViT-S-32 has no pretrained tags in open_clip ('laion9000' asked for)"),
        (["-m", ARCH, "-p", "/nonexistent/weights.pt"], "checkpoint file not found: /nonexistent/weights.pt"),
        (["-m", "ViT-B-33", "-p", "openai"], "unknown model 'ViT-B-33' (did you mean"),
    ],
)
def test_unknown_model_names_are_usage_errors_exit_2(args, expected):
    """A model, tag or file that does not exist is a mistake on the command line, as an unknown
    dataset is: exit 2 (weights that exist but cannot be fetched or read are exit 1)."""
    result = CliRunner().invoke(app, ["build-prompts", "--label", "cat", *args])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and expected in result.stderr


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_with_code_is_refused_and_never_runs(tmp_path, image_dir):
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.pt"
    with evil.open("wb") as f:
        pickle.dump({"visual.proj": _Payload(str(marker))}, f)
    proc = run_cli("classify", str(image_dir / "a.png"), "--label", "x", "-m", ARCH, "-p", str(evil))
    assert proc.returncode == 1
    assert "refusing checkpoint" in one_line_error(proc)
    assert not marker.exists()


def test_safetensors_checkpoint_gives_same_numbers(checkpoint, tmp_path, image_dir):
    import torch
    from safetensors.torch import save_file

    st = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in torch.load(checkpoint, weights_only=True).items()}, st)
    outs = []
    for weights in (checkpoint, st):
        r = CliRunner().invoke(app, ["classify", str(image_dir / "b.jpg"), "--label", "a", "--label", "b",
                                     "-m", ARCH, "-p", str(weights), "--no-cache"])  # fmt: skip
        assert r.exit_code == 0, r.output
        outs.append(json.loads(r.stdout)["top_k"])
    assert outs[0] == outs[1]


def test_openai_tag_runs_with_quickgelu(monkeypatch):
    """OpenAI weights were trained with QuickGELU; ViT-B-32's config says GELU. We pass the flag."""
    import open_clip

    seen = {}

    def fake_factory(name, pretrained=None, **kwargs):
        seen.update(kwargs, name=name, pretrained=pretrained)
        raise RuntimeError("stop here")

    monkeypatch.setattr(open_clip, "create_model_from_pretrained", fake_factory)
    with pytest.raises(ModelLoadError):
        load_model(resolve_spec("ViT-B-32", "openai"))
    assert seen["force_quick_gelu"] is True and seen["pretrained"] == "openai"
    seen.clear()
    with pytest.raises(ModelLoadError):
        load_model(resolve_spec("ViT-B-32", "laion2b_s34b_b79k"))
    assert "force_quick_gelu" not in seen


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from zeroshot.cli import app\n"
        "for args in (['--help'], ['classify', '--help'], ['build-prompts', '--help']):\n"
        "    assert CliRunner().invoke(app, args).exit_code == 0\n"
        "print(sorted(m for m in ('torch', 'open_clip', 'numpy', 'PIL') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    proc = run_cli("--help")
    assert proc.returncode == 0 and "classify" in proc.stdout


def test_cli_imports_transformers_only_for_a_model_that_needs_it():
    """open_clip imports transformers whenever it is installed (0.8 s); the CLI defers it."""
    code = (
        "import sys\n"
        "sys.argv = ['zeroshot', 'classify', *sys.argv[1:]]\n"
        "from zeroshot.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "import open_clip.hf_model\n"
        "print('transformers' in sys.modules, open_clip.hf_model.transformers is None, file=sys.stderr)\n"
    )
    image = str(Path(__file__).resolve().parent.parent / "examples" / "fashion" / "ankle-boot-0000.png")
    done = subprocess.run([sys.executable, "-c", code, image, "-m", BUNDLED_NAME, "--dataset", "fashion-mnist"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["label"] == "ankle boot"
    assert done.stderr.split()[-2:] == ["False", "True"]


def test_options_that_do_not_apply_to_the_model_are_refused():
    """Said, never silently ignored: a tag for the bundled model, --preprocess without a checkpoint
    file (a tag, the bundled model, a classifier file's model)."""
    cases = {
        ("-m", BUNDLED_NAME, "-p", "openai"): "fashion-mini is zeroshot's bundled model: it brings its own weights "
        "and takes no --pretrained tag ('openai')",
        ("-m", BUNDLED_NAME, "--preprocess", "openai"): "--preprocess does not apply to fashion-mini",
        ("-m", "ViT-B-32", "-p", "openai", "--preprocess", "laion2b_s34b_b79k"): "--preprocess laion2b_s34b_b79k "
        "applies to a checkpoint file (--pretrained FILE); ViT-B-32 (openai) brings its own preprocessing",
    }
    for args, message in cases.items():
        result = CliRunner().invoke(app, ["build-prompts", "--label", "cat", *args])
        assert result.exit_code == 2 and result.stdout == "", args
        assert result.stderr.startswith(f"zeroshot: error: {message}") and result.stderr.count("\n") == 1
