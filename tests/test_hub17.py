"""Issue 17, item 1: Hugging Face ids as well as folders, through the Hugging Face cache.

The cache is a fake one in a temporary folder, laid out as huggingface_hub lays it out
(``models--ORG--NAME/{blobs,refs,snapshots}``, snapshot files linking into ``blobs``), holding
tiny random GPT-2s. Nothing reaches the network: sockets refuse to connect, and a download is
a fake ``snapshot_download`` that copies from a local "remote" folder what it is asked for.
"""

from __future__ import annotations

import fnmatch
import hashlib
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from conftest import make_hf_model

from archplay.app.catalog import Catalog
from archplay.app.explore import run
from archplay.app.main import parse_args
from archplay.models import LoadError, load
from archplay.models.checkpoints import hub

REV_A, REV_B = "a" * 40, "b" * 40
REAL_SNAPSHOT_DOWNLOAD = huggingface_hub.snapshot_download
# What a download may ask for: config, tokenizer files, the safetensors index, and safetensors weights.
ALLOWED = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
           "added_tokens.json", "vocab.*", "merges.txt", "tokenizer.model", "spiece.model",
           "model.safetensors.index.json"}  # fmt: skip


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a test touched the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache found through HF_HOME (HF_HUB_CACHE unset), offline."""
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = tmp_path / "hf" / "hub"
    root.mkdir(parents=True)
    return root


def put(cache: Path, repo_id: str, revision: str, source: Path, *, refs=("main",), files=None) -> Path:
    """Store ``source``'s files as ``repo_id``'s snapshot ``revision``, as huggingface_hub does."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for f in sorted(source.iterdir()):
        if files is not None and f.name not in files:
            continue
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, blob)
        (snapshot / f.name).unlink(missing_ok=True)
        (snapshot / f.name).symlink_to(Path("..", "..", "blobs", blob.name))
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(revision)
    return snapshot


def same_logits(model, tok, hf):
    ids = torch.tensor([tok.encode("the cat sat on the mat")])
    torch.testing.assert_close(model(ids).logits, hf(ids).logits, atol=1e-4, rtol=0)


@pytest.fixture
def tiny(tmp_path):
    """Two tiny random GPT-2 checkpoints (different weights) in local folders: (folder, hf model) each."""
    a, b = tmp_path / "src_a", tmp_path / "src_b"
    return (a, make_hf_model("gpt2", a, seed=0)), (b, make_hf_model("gpt2", b, seed=1))


# --------------------------------------------------------------------------- the cache, offline


def test_a_cached_repository_loads_offline_through_hf_home(cache, tiny):
    (a, hf_a), _ = tiny
    put(cache, "org/tiny", REV_A, a)
    assert hub.cache_dir() == cache
    model, tok = load("org/tiny")
    assert model.config.family == "decoder" and model.config.name == "org/tiny"
    same_logits(model, tok, hf_a)


def test_a_revision_after_at_picks_the_snapshot(cache, tiny):
    (a, hf_a), (b, hf_b) = tiny
    put(cache, "org/tiny", REV_A, a)  # main
    put(cache, "org/tiny", REV_B, b, refs=("v2",))  # a tag
    for name, hf in (("org/tiny", hf_a), (f"org/tiny@{REV_A}", hf_a), (f"org/tiny@{REV_B}", hf_b),
                     ("org/tiny@v2", hf_b), ("org/tiny@main", hf_a)):  # fmt: skip
        model, tok = load(name)
        same_logits(model, tok, hf)
    with pytest.raises(LoadError, match="hf download org/tiny --revision v3"):
        load("org/tiny@v3")


def test_hf_hub_cache_wins_over_hf_home(cache, tiny, tmp_path, monkeypatch):
    (a, hf_a), _ = tiny
    other = tmp_path / "elsewhere"
    put(other, "org/tiny", REV_A, a)
    monkeypatch.setenv("HF_HUB_CACHE", str(other))
    model, tok = load("org/tiny")
    same_logits(model, tok, hf_a)


def test_a_missing_repository_offline_says_how_to_get_it(cache, monkeypatch):
    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: calls.append(k) or 1 / 0)
    with pytest.raises(LoadError) as e:
        load("EleutherAI/pythia-70m")
    message = str(e.value)
    assert "EleutherAI/pythia-70m is not in the Hugging Face cache" in message and str(cache) in message
    assert "hf download EleutherAI/pythia-70m --include '*.json'" in message and "'model*.safetensors'" in message
    assert "HF_HUB_OFFLINE=0" in message
    assert calls == []  # the repository has no folder in the cache: nothing was even looked up
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(LoadError, match="downloads are off.*allow_download=True"):
        load("EleutherAI/pythia-70m", allow_download=False)
    assert calls == []


def test_a_partial_snapshot_names_what_is_missing(cache, tiny):
    (a, _), _ = tiny
    put(cache, "org/tiny", REV_A, a, files={"config.json", "tokenizer.json", "tokenizer_config.json"})
    with pytest.raises(LoadError, match=r"only part of it: the weights .* missing.*hf download org/tiny"):
        load("org/tiny")


def test_a_bare_name_is_looked_up_in_the_cache_only(cache, tiny):
    (a, hf_a), _ = tiny
    put(cache, "tiny", REV_A, a)  # a legacy id without an organisation (like "gpt2")
    model, tok = load("tiny")
    same_logits(model, tok, hf_a)
    with pytest.raises(LoadError, match="unknown model 'nonsense'.*ORG/NAME"):
        load("nonsense")


def test_an_existing_folder_stays_a_folder(cache, tiny, tmp_path, monkeypatch):
    (a, hf_a), (b, hf_b) = tiny
    put(cache, "org/tiny", REV_A, a)
    monkeypatch.chdir(tmp_path)
    shutil.copytree(b, tmp_path / "org" / "tiny")
    model, tok = load("org/tiny")  # the folder ./org/tiny, not the cached repository
    same_logits(model, tok, hf_b)


def test_a_snapshot_file_linking_out_of_its_repository_is_refused(cache, tiny, tmp_path):
    (a, _), _ = tiny
    snapshot = put(cache, "org/tiny", REV_A, a)
    (snapshot / "model.safetensors").unlink()
    (snapshot / "model.safetensors").symlink_to(a / "model.safetensors")  # outside models--org--tiny
    with pytest.raises(LoadError, match="leads outside") as e:
        load("org/tiny")
    assert str(snapshot) not in str(e.value)


@pytest.mark.parametrize("name", ["../x", "a/b/c", "<img src=x onerror=alert(1)>", "org/na..me", "org/--x",
                                  "org/tiny@../../etc", "/etc/passwd", "org/", "org/tiny@", ".hidden/x",
                                  "org/tiny@a b", "o" * 97 + "/x"])  # fmt: skip
def test_names_of_a_bad_shape_are_not_repository_ids(name):
    assert hub.parse(name) is None
    with pytest.raises(LoadError, match="not a Hugging Face repository id"):
        hub.resolve(name, allow_download=True)


def test_good_names_parse():
    assert hub.parse("EleutherAI/pythia-70m") == hub.RepoRef("EleutherAI/pythia-70m")
    assert str(hub.parse("org/x.y_z-1@refs/pr/1")) == "org/x.y_z-1@refs/pr/1"
    assert hub.parse("gpt2") == hub.RepoRef("gpt2")


# --------------------------------------------------------------------------- downloading


class FakeHub:
    """``snapshot_download`` against local "remote" folders: what it copies is what it was asked for."""

    def __init__(self, cache: Path, remotes: dict[str, Path]):
        self.cache, self.remotes, self.calls = cache, remotes, []

    def __call__(self, repo_id, *, revision=None, cache_dir=None, local_files_only=False, allow_patterns=None,
                 **kw):  # fmt: skip
        if local_files_only:
            return REAL_SNAPSHOT_DOWNLOAD(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True, **kw)
        assert Path(cache_dir) == self.cache and allow_patterns is not None and not kw.get("ignore_patterns")
        self.calls.append(list(allow_patterns))
        if repo_id not in self.remotes:
            from huggingface_hub.errors import RepositoryNotFoundError

            raise RepositoryNotFoundError("404", response=SimpleNamespace(headers={}, status_code=404, request=None))
        source = self.remotes[repo_id]
        names = [p.name for p in source.iterdir() if any(fnmatch.fnmatch(p.name, pat) for pat in allow_patterns)]
        return str(put(self.cache, repo_id, REV_A, source, files=set(names)))


@pytest.fixture
def remote(cache, tiny, tmp_path, monkeypatch):
    """A "remote" repository org/tiny holding what a real one does: sharded safetensors, and the same
    weights again as a pickle and a consolidated file, which must not be fetched."""
    (a, _), _ = tiny
    from transformers import GPT2LMHeadModel

    src = tmp_path / "remote"
    shutil.copytree(a, src)
    (src / "model.safetensors").unlink()
    hf = GPT2LMHeadModel.from_pretrained(a)
    hf.save_pretrained(src, max_shard_size="40KB")  # model-0000k-of-0000n.safetensors + index
    torch.save(hf.state_dict(), src / "pytorch_model.bin")
    shutil.copyfile(next(src.glob("model-*.safetensors")), src / "consolidated.safetensors")
    (src / "README.md").write_text("a model card")
    fake = FakeHub(cache, {"org/tiny": src})
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    return fake, src, hf


def test_a_download_fetches_only_config_tokenizer_and_safetensors(remote, cache):
    fake, src, hf = remote
    shards = sorted(p.name for p in src.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1
    model, tok = load("org/tiny")
    same_logits(model, tok, hf)
    assert fake.calls[0] == sorted(ALLOWED, key=list(hub.SMALL_FILES).index)  # first the small files
    assert sorted(fake.calls[1]) == shards  # then exactly the shards the index names
    got = sorted(p.name for p in (cache / "models--org--tiny" / "snapshots" / REV_A).iterdir())
    assert "pytorch_model.bin" not in got and "consolidated.safetensors" not in got and "README.md" not in got
    for pattern in (p for call in fake.calls for p in call):
        assert pattern in ALLOWED or pattern.endswith(".safetensors"), pattern
    fake.calls.clear()
    load("org/tiny")  # now cached: nothing more is fetched
    assert fake.calls == []


def test_offline_forbids_the_download_even_when_allowed(remote, monkeypatch):
    fake, _, _ = remote
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LoadError, match="HF_HUB_OFFLINE is set"):
        load("org/tiny")
    assert fake.calls == []


def test_an_unknown_repository_and_one_without_safetensors(remote, tmp_path):
    fake, src, _ = remote
    with pytest.raises(LoadError, match="no such folder: org/nothing; and no Hugging Face repository org/nothing"):
        load("org/nothing")
    pickles = tmp_path / "pickles"
    shutil.copytree(src, pickles)
    for f in pickles.glob("*.safetensors*"):
        f.unlink()
    fake.remotes["org/pickles"] = pickles
    with pytest.raises(LoadError, match="lacks the weights.*never pickled"):
        load("org/pickles")


# --------------------------------------------------------------------------- the app


def test_the_command_line_downloads_and_the_page_only_when_allowed(remote, cache, tmp_path, monkeypatch):
    fake, _, hf = remote
    assert parse_args([]).allow_downloads is False and parse_args(["--allow-downloads"]).allow_downloads
    page = Catalog(device="cpu")
    assert not page.loads_by_name and page.folders() == []
    status, key = run.load_model(page, "org/tiny")
    assert key is None and status.startswith("✕") and "--allow-downloads" in status
    assert str(cache) not in status and fake.calls == []
    # The command line (--model org/tiny) downloads it: a user who types an id wants it.
    cli = Catalog.from_names(["org/tiny"], builtins=(), log=lambda m: None)
    assert cli.preferred == "org/tiny" and len(fake.calls) == 2
    same_logits(cli.get("org/tiny").model, cli.get("org/tiny").tokenizer, hf)
    # Once cached, any page loads it, and its load box offers it.
    assert page.loads_by_name and page.folders() == ["org/tiny"]
    status, key = run.load_model(page, "org/tiny")
    assert status.startswith("✓") and key == "org/tiny" and page.get(key).family == "decoder"


def test_a_page_with_downloads_allowed_fetches(remote):
    fake, _, hf = remote
    page = Catalog(device="cpu", allow_downloads=True)
    assert page.loads_by_name
    status, key = run.load_model(page, "org/tiny")
    assert status.startswith("✓") and key == "org/tiny" and len(fake.calls) == 2
    status, key = run.load_model(page, "org/nothing")
    assert key is None and "no Hugging Face repository org/nothing" in status


def test_a_page_never_reads_a_local_path_for_an_id(cache, tiny, tmp_path, monkeypatch):
    (a, _), (b, _) = tiny
    monkeypatch.chdir(tmp_path)
    shutil.copytree(b, tmp_path / "org" / "tiny")  # a folder the library would read; a visitor may not
    page = Catalog(device="cpu")
    status, key = run.load_model(page, "org/tiny")
    assert key is None and "not in this server's Hugging Face cache" in status and str(tmp_path) not in status
    put(cache, "org/tiny", REV_A, a)
    status, key = run.load_model(page, "org/tiny")
    assert key == "org/tiny"


@pytest.mark.parametrize("name", ["../x", "a/b/c", "<b>bold</b>", "", "org/tiny@../../x", "/etc", "a\x00b"])
def test_a_page_refuses_names_of_a_bad_shape(cache, name):
    page = Catalog(device="cpu", allow_downloads=True)
    status, key = run.load_model(page, name)
    assert key is None and status.startswith("✕") and len(page) == 0
    assert "<b>" not in status


def test_a_models_directory_folder_wins_and_a_missing_one_falls_back_to_the_cache(cache, tiny, tmp_path):
    (a, hf_a), (b, hf_b) = tiny
    models_dir = tmp_path / "models"
    shutil.copytree(b, models_dir / "tiny")
    put(cache, "tiny", REV_A, a)
    put(cache, "org/tiny", REV_A, a)
    page = Catalog(device="cpu", models_dir=models_dir)
    assert page.folders() == ["tiny", "org/tiny"]  # the folder; the cached bare "tiny" is shadowed by it
    status, key = run.load_model(page, "tiny")
    same_logits(page.get(key).model, page.get(key).tokenizer, hf_b)
    status, key = run.load_model(page, "org/tiny")
    assert key == "org/tiny"
    same_logits(page.get(key).model, page.get(key).tokenizer, hf_a)
    status, key = run.load_model(page, "missing")
    assert key is None and "no folder 'missing' in the models directory" in status and "Hugging Face cache" in status


def test_a_shared_server_loads_no_id_unless_started_with_allow_downloads(cache, tiny, monkeypatch):
    from archplay.app import main

    (a, _), _ = tiny
    put(cache, "org/tiny", REV_A, a)
    built = {}

    def fake_from_names(names, **kw):
        built["catalog"] = page = Catalog(device="cpu", allow_downloads=kw.get("allow_downloads", False))
        return page

    monkeypatch.setattr(main.Catalog, "from_names", staticmethod(fake_from_names))
    monkeypatch.setattr(main.lab, "Lab", lambda *a, **k: (_ for _ in ()).throw(SystemExit("stop after the catalog")))
    for host, flag, ids in [("127.0.0.1", [], True), ("0.0.0.0", [], False), ("0.0.0.0", ["--allow-downloads"], True)]:
        with pytest.raises(SystemExit, match="stop after the catalog"):
            main.main(["--host", host, *flag])
        page = built["catalog"]
        assert page.hub_ids is ids
        assert ("org/tiny" in page.folders()) is ids and page.loads_by_name is ids
        status, key = run.load_model(page, "org/tiny")
        assert (key == "org/tiny") is ids
        if not ids:
            assert "only when it was started with --allow-downloads" in status
