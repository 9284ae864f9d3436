"""models.load: built-ins, folders, and a clear message for every kind of broken folder."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

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
    ("unsupported family", "'falcon' is not supported; supported: gpt2, llama, mistral, qwen2, .*gpt_neox, .*bert, roberta"),
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


# --------------------------------------------------------------------------- checked before anything is built


def _set_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, **changes}))


@pytest.mark.parametrize("changes, message", [
    ({"n_layer": 1_000_000}, "declares n_layer = 1,000,000, above the limit of 1,024"),
    ({"vocab_size": 10**9}, "declares vocab_size = 1,000,000,000, above the limit"),
    ({"n_embd": 4096, "n_layer": 24}, "do not fit its config.json: .*shapes"),  # ~5 GB declared, 50 KB stored
    ({"n_embd": 0}, "not a valid gpt2 config: DecoderConfig: d_model must be a whole number of at least 1, got 0"),
    ({"n_head": 2.5}, "n_head must be a whole number of at least 1, got 2.5"),
    ({"activation_function": "swoosh"}, "not a valid gpt2 config: .*swoosh"),
])  # fmt: skip
def test_a_config_is_checked_against_limits_and_stored_shapes_before_any_memory(hf_folder, monkeypatch, changes,
                                                                                message):  # fmt: skip
    """Absurd sizes are refused by name; sizes the weights do not hold are refused on a meta skeleton."""
    from archplay.models.architectures.decoder import Decoder

    folder, _ = hf_folder("gpt2")
    _set_config(folder, **changes)
    built_on = []
    init = Decoder.__init__
    monkeypatch.setattr(Decoder, "__init__", lambda self, cfg: (built_on.append(torch.get_default_device().type),
                                                                init(self, cfg))[1])  # fmt: skip
    with pytest.raises(LoadError, match=message):
        models.load(folder)
    assert set(built_on) <= {"meta"}  # nothing was materialised


def _shard(folder, name_in_index: str):
    """The gpt2 folder's weights as one shard named ``name_in_index`` by model.safetensors.index.json."""
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {k: name_in_index for k in state}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors"])
def test_a_shard_index_cannot_name_a_file_outside_its_folder(hf_folder, shard):
    folder, _ = hf_folder("gpt2")
    _shard(folder, shard)
    with pytest.raises(LoadError, match="names a shard outside its folder"):
        models.load(folder)


def test_a_shard_index_inside_its_folder_loads(hf_folder):
    folder, hf = hf_folder("gpt2")
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    from safetensors.torch import load_file

    state = load_file(str(folder / "model-00001-of-00001.safetensors"))
    index = {"metadata": {}, "weight_map": {k: "model-00001-of-00001.safetensors" for k in state}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    model, tok = models.load(folder)
    ids = torch.tensor([tok.encode("the cat sat")])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, hf(ids).logits, atol=1e-4, rtol=0)


def test_within_a_models_directory_no_file_may_link_out_and_messages_name_no_server_path(hf_folder, tmp_path):
    from archplay.models.checkpoints.loading import load_folder

    folder, _ = hf_folder("gpt2")
    models_dir = tmp_path / "models_dir"
    models_dir.mkdir()
    inside = models_dir / "gpt2"
    inside.mkdir()
    for f in folder.iterdir():
        (inside / f.name).write_bytes(f.read_bytes())
    load_folder(inside, root=models_dir)  # a plain copy loads

    (inside / "model.safetensors").unlink()
    (inside / "model.safetensors").symlink_to(folder / "model.safetensors")  # a link leaving the directory
    with pytest.raises(LoadError, match="model.safetensors leads outside the folder it was loaded from"):
        load_folder(inside, root=models_dir)
    models.load(inside)  # the server's own --model is trusted: no root, the link is followed

    (inside / "model.safetensors").unlink()
    with pytest.raises(LoadError) as e:
        load_folder(inside, root=models_dir)
    assert "has no weights" in str(e.value)
    assert str(tmp_path) not in str(e.value) and str(models_dir.resolve()) not in str(e.value)
    assert str(e.value).startswith("gpt2 has no weights")


def test_a_huggingface_cache_snapshot_links_into_its_own_blobs(hf_folder, tmp_path):
    """The cache's layout: snapshots/<rev>/file -> ../../blobs/<hash>, all inside the models directory."""
    from archplay.models.checkpoints.loading import load_folder

    folder, _ = hf_folder("gpt2")
    repo = tmp_path / "cache" / "models--org--tiny"
    blobs, snapshot = repo / "blobs", repo / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, f in enumerate(sorted(folder.iterdir())):
        (blobs / f"blob{i}").write_bytes(f.read_bytes())
        (snapshot / f.name).symlink_to(Path("..") / ".." / "blobs" / f"blob{i}")
    model, _ = load_folder(snapshot, root=tmp_path / "cache")
    assert model.config.n_layer == 2
