"""models.load: built-ins, folders, and a clear message for every kind of broken folder."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch

from archplay import models
from archplay.models import LoadError


def test_builtins_load_trained_and_round_trip_any_text():
    for name in models.BUILTIN_NAMES:
        model, tok = models.load(name)
        assert model.config.trained and model.config.name == name
        text = "Mia has a red ball. 🎈 日本語 مرحبا\x00\t  end"
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert len(tok.tokens(ids)) == len(ids)


def test_missing_builtin_says_how_to_train_it(monkeypatch, tmp_path):
    monkeypatch.setattr(models.checkpoints.loading, "BUILTIN_DIR", tmp_path)
    with pytest.raises(LoadError, match="python -m archplay.models.training.train --model gpt"):
        models.load("gpt")


def test_pytorch_bin_checkpoint_loads(hf_folder):
    folder, hf = hf_folder("gpt2")
    model_file = folder / "model.safetensors"
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    torch.save(state, folder / "pytorch_model.bin")
    model_file.unlink()
    ours, tok = models.load(folder)
    ids = torch.tensor([tok.encode("the cat sat")])
    torch.testing.assert_close(ours(ids).logits, hf(ids).logits, atol=1e-4, rtol=0)


class _Payload:
    def __reduce__(self):
        return (print, ("pwned",))  # any callable: a plain pickle load would run it


def _break(folder, case):
    weights = folder / "model.safetensors"
    if case == "missing folder":
        shutil.rmtree(folder)
    elif case == "not a folder":
        shutil.rmtree(folder)
        folder.write_text("hello")
    elif case == "no config":
        (folder / "config.json").unlink()
    elif case == "config not json":
        (folder / "config.json").write_text("{not json")
    elif case == "unsupported family":
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "falcon"}))
    elif case == "config lacks a field":
        cfg = json.loads((folder / "config.json").read_text())
        del cfg["n_embd"]
        (folder / "config.json").write_text(json.dumps(cfg))
    elif case == "no weights":
        weights.unlink()
    elif case == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif case == "weights do not fit config":
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, "n_embd": 48}))
    elif case == "missing tensor":
        from safetensors.torch import load_file, save_file

        state = load_file(str(weights))
        del state["transformer.h.1.mlp.c_fc.weight"]
        save_file(state, str(weights))
    elif case == "pickle carrying code":
        weights.unlink()
        (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"wte.weight": _Payload()}))
    elif case == "no tokenizer":
        for f in folder.glob("tokenizer*"):
            f.unlink()
    else:
        raise ValueError(case)


BROKEN = [
    ("missing folder", "no such folder"),
    ("not a folder", "is not a folder"),
    ("no config", "has no config.json"),
    ("config not json", "could not be read as JSON"),
    ("unsupported family", "'falcon' is not supported; supported: gpt2, llama, qwen2, .*bert"),
    ("config lacks a field", "lacks 'n_embd'"),
    ("no weights", "has no weights: expected model.safetensors"),
    ("truncated weights", "could not be read"),
    ("weights do not fit config", "do not fit its config.json: .*shapes"),
    ("missing tensor", "do not fit its config.json: missing tensors layers.1.mlp.up_proj.weight"),
    ("pickle carrying code", "could not be read .*(Unpickl|weights_only)"),
    ("no tokenizer", "tokenizer .* could not be loaded"),
]


@pytest.mark.parametrize("case, message", BROKEN, ids=[c for c, _ in BROKEN])
def test_broken_folder_gives_clear_error(hf_folder, case, message, capsys):
    folder, _ = hf_folder("gpt2")
    _break(folder, case)
    with pytest.raises(LoadError, match=message):
        models.load(folder)
    assert "pwned" not in capsys.readouterr().out  # the pickle's code never ran


def test_unknown_name_lists_builtins():
    with pytest.raises(LoadError, match="unknown model 'gtp': built-ins are gpt"):
        models.load("gtp")


def test_labels_for_ids_beyond_the_tokenizer(hf_folder):
    """A model's vocabulary is often padded past the tokenizer's: those ids get a readable label."""
    folder, _ = hf_folder("gpt2")
    _, tok = models.load(folder)
    n = tok.vocab_size
    labels = tok.tokens([tok.encode("cat")[0], n, n + 5])
    assert labels[1:] == [f"<{n}>", f"<{n + 5}>"]
    assert labels[0] not in ("None", "") and "None" not in labels


def test_fast_cpu_layout_keeps_values_ties_and_outputs():
    """Loading on the CPU stores widening projections column-major: same numbers, same model."""
    from archplay.models.checkpoints.loading import BUILTIN_DIR, fast_cpu_layout, load_builtin

    model, tok = load_builtin(BUILTIN_DIR / "moe")  # as trained: every weight contiguous
    ids = torch.tensor([tok.encode("Mia has a red ball. Then she")])
    with torch.no_grad():
        before = model(ids).logits
        params = {k: v.clone() for k, v in model.state_dict().items()}
        fast_cpu_layout(model)
        after = model(ids).logits
    changed = [n for n, p in model.named_parameters() if not p.is_contiguous()]
    assert changed and all(torch.equal(model.state_dict()[k], v) for k, v in params.items())
    assert model.lm_head.weight is model.embed_tokens.weight  # the tie survives
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    widening = [f"{n}.weight" for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) and n != "lm_head" and m.out_features >= m.in_features]  # fmt: skip
    assert sorted(changed) == sorted(widening)  # e.g. q and o (square), gate and up; not k, v (GQA) or down
