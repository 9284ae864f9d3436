"""Hugging Face repository ids (``ORG/NAME``, optionally ``@REVISION``) -> a checkpoint folder in the cache.

``resolve`` looks in the Hugging Face cache first (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
``~/.cache/huggingface/hub``, read when called); a repository that is not there is downloaded
only when the caller allows it and ``HF_HUB_OFFLINE`` does not forbid it, and then only what
``load_folder`` reads: the config, the tokenizer files and the safetensors weights (never a
pickled ``*.bin``/``*.pt``), with huggingface_hub's progress bar. Otherwise the LoadError says
how to get it. The folder returned is a snapshot inside the cache (``snapshots/<commit>``);
``repo_root`` is the folder all its files must resolve inside (its links point into ``blobs/``).

A name is checked for its shape before it touches the file system, so a typed name cannot
lead anywhere but to a repository's folder in the cache.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from archplay.models.checkpoints.convert import LoadError

# The Hub's own rules: letters, digits, "-", "_", "." (no "--" or "..", not starting with "-" or "."),
# at most 96 characters a part. A revision is a branch, tag or commit (parts joined by "/": refs/pr/1).
_PART = r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,95}"
_REPO = re.compile(rf"(?:(?P<org>{_PART})/)?(?P<name>{_PART})")
_REVISION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,99}(?:/[A-Za-z0-9_][A-Za-z0-9_.\-]{0,99}){0,3}")

CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.*", "merges.txt", "tokenizer.model", "spiece.model")  # fmt: skip
INDEX = "model.safetensors.index.json"
# What is downloaded first (small files); the weights follow: model.safetensors, or exactly the shards INDEX names.
SMALL_FILES = (*CONFIG_FILES, *TOKENIZER_FILES, INDEX)
# The same, for a person to type (hf download's --include takes globs).
INCLUDE = ("*.json", "*.txt", "*.model", "model*.safetensors")


@dataclass(frozen=True)
class RepoRef:
    """A parsed repository id: ``repo_id`` (``ORG/NAME`` or a bare legacy ``NAME``) and an optional revision."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")

    @property
    def folder_name(self) -> str:
        """The repository's folder in the cache, as huggingface_hub names it."""
        return "models--" + self.repo_id.replace("/", "--")

    def command(self) -> str:
        """The shell command that puts what ``load`` needs into the cache."""
        revision = f" --revision {self.revision}" if self.revision else ""
        return f"hf download {self.repo_id}{revision} " + " ".join(f"--include '{p}'" for p in INCLUDE)


def parse(name: str) -> RepoRef | None:
    """The repository id ``name`` names (``ORG/NAME``, ``NAME``, either with ``@REVISION``), or None
    when it does not have that shape (``../x``, ``a/b/c``, markup, a path)."""
    if not isinstance(name, str) or len(name) > 300:
        return None
    repo, at, revision = name.partition("@")
    m = _REPO.fullmatch(repo)
    if m is None or any(".." in p or "--" in p or p.endswith(".") for p in repo.split("/")):
        return None
    if at and (not _REVISION.fullmatch(revision) or ".." in revision):
        return None
    return RepoRef(repo, revision or None)


def cache_dir() -> Path:
    """The Hugging Face cache, from the environment as it is now (as huggingface_hub reads it at import)."""
    from huggingface_hub import constants

    env = os.environ
    if env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE"):
        path = env.get("HF_HUB_CACHE") or env["HUGGINGFACE_HUB_CACHE"]
    elif env.get("HF_HOME"):
        path = os.path.join(env["HF_HOME"], "hub")
    else:
        path = constants.HF_HUB_CACHE
    return Path(os.path.expandvars(os.path.expanduser(path)))


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as it is now; huggingface_hub's reading otherwise."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    if value is not None:
        return value.strip().upper() in ("1", "ON", "YES", "TRUE")
    return bool(constants.HF_HUB_OFFLINE)


def repo_root(ref: RepoRef) -> Path:
    """The folder of ``ref`` in the cache: every file of its snapshots resolves inside it."""
    return cache_dir() / ref.folder_name


def missing(folder: Path) -> list[str]:
    """What ``load_folder`` needs that ``folder`` lacks: the config, the weights, the tokenizer."""
    from archplay.models.checkpoints import loading

    lacks = [] if (folder / "config.json").is_file() else ["config.json"]
    if not any((folder / f).is_file() for f in ("model.safetensors", "pytorch_model.bin")):
        shards = _shards(folder)
        if shards is None or not all((folder / s).is_file() for s in shards):
            lacks.append("the weights (model.safetensors, or the shards model.safetensors.index.json names)")
    if not any((folder / f).is_file() for f in loading.TOKENIZER_FILES):
        lacks.append("the tokenizer (" + ", ".join(loading.TOKENIZER_FILES) + ")")
    return lacks


def _shards(folder: Path) -> list[str] | None:
    """The plain file names the safetensors index names (None: no index, or one that cannot be read;
    ``load_folder`` then says what is wrong with it)."""
    index = folder / INDEX
    if not index.is_file():
        return None
    try:
        names = sorted({str(v) for v in json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return [n for n in names if "/" not in n and "\\" not in n and n not in ("", ".", "..")]


def cached(name: str | RepoRef) -> Path | None:
    """The cached snapshot of ``name`` when it holds everything ``load`` reads; None otherwise."""
    ref = parse(name) if isinstance(name, str) else name
    if ref is None:
        return None
    folder = _cached_snapshot(ref)
    return folder if folder is not None and not missing(folder) else None


def _cached_snapshot(ref: RepoRef) -> Path | None:
    """The snapshot folder the cache holds for ``ref`` (complete or not), looked up without the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    root = repo_root(ref)
    if not root.is_dir():
        return None
    try:
        path = snapshot_download(ref.repo_id, revision=ref.revision, cache_dir=str(cache_dir()),
                                 local_files_only=True)  # fmt: skip
    except (OSError, ValueError, HFValidationError):  # LocalEntryNotFoundError is an OSError
        return None
    return _checked(Path(path), ref)


def _checked(folder: Path, ref: RepoRef) -> Path:
    """``folder`` if it is one of ``ref``'s snapshots inside the cache; LoadError otherwise."""
    if not folder.resolve().is_relative_to(repo_root(ref).resolve()):
        raise LoadError(f"the cached {ref} leads outside the Hugging Face cache")
    return folder


def cached_repos(limit: int = 200) -> list[str]:
    """The repository ids whose ``main`` snapshot in the cache is complete and of a supported
    ``model_type``, at most ``limit`` (read from the folders, without huggingface_hub's machinery)."""
    from archplay.models import registry

    root, types, found = cache_dir(), set(registry.model_types()), []
    try:
        repos = sorted(p for p in root.iterdir() if p.name.startswith("models--"))
    except OSError:
        return []
    for repo in repos:
        ref = parse(repo.name.removeprefix("models--").replace("--", "/", 1))
        try:
            commit = (repo / "refs" / "main").read_text(encoding="utf-8").strip()
            folder = repo / "snapshots" / commit
            if ref is None or not re.fullmatch(r"[0-9a-f]{40}", commit) or missing(folder):
                continue
            config = json.loads((_checked(folder, ref) / "config.json").read_text(encoding="utf-8"))
            model_type = config.get("model_type")
        except (OSError, ValueError, AttributeError, LoadError):
            continue
        if model_type in types:
            found.append(ref.repo_id)
            if len(found) >= limit:
                break
    return found


def resolve(name: str, *, allow_download: bool, server: bool = False) -> Path:
    """The checkpoint folder of the repository id ``name``: cached, else downloaded (when
    ``allow_download`` and not offline); LoadError saying how to get it otherwise.

    ``server``: the request comes from a page, so messages name no path on the server and point
    at ``--allow-downloads``. A bare ``NAME`` (no ``ORG/``) is only looked up in the cache.
    """
    ref = parse(name)
    if ref is None:
        raise LoadError(f"{str(name)[:80]!r} is not a Hugging Face repository id: give ORG/NAME, "
                        "optionally with @REVISION (a branch, tag or commit)")  # fmt: skip
    folder = _cached_snapshot(ref)
    if folder is not None and not missing(folder):
        return folder
    where = "this server's Hugging Face cache" if server else f"the Hugging Face cache ({cache_dir()})"
    have = f" (the cache holds only part of it: {', '.join(missing(folder))} missing)" if folder is not None else ""
    if "/" not in ref.repo_id:
        raise LoadError(f"{ref} is not in {where}{have}; a repository to download is named ORG/NAME "
                        f"(e.g. openai-community/{ref.repo_id})")  # fmt: skip
    if not allow_download or offline():
        if server and not allow_download:
            how = ("this server downloads nothing unless started with --allow-downloads; "
                   f"whoever runs it can also fetch it with: {ref.command()}")  # fmt: skip
        elif offline():
            how = f"HF_HUB_OFFLINE is set, so nothing is downloaded; get it with: {ref.command()} (or set HF_HUB_OFFLINE=0)"
        else:
            how = f"downloads are off; get it with: {ref.command()} (or load it with allow_download=True)"
        raise LoadError(f"{ref} is not in {where}{have}; {how}")
    return _download(ref, server=server)


def _download(ref: RepoRef, *, server: bool) -> Path:
    """Download the config, tokenizer files and safetensors weights of ``ref`` into the cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    common = dict(cache_dir=str(cache_dir()))
    print(f"archplay: downloading {ref} (config, tokenizer, safetensors weights) into the Hugging Face cache",
          file=sys.stderr, flush=True)  # fmt: skip
    try:
        folder = Path(snapshot_download(ref.repo_id, revision=ref.revision, allow_patterns=list(SMALL_FILES), **common))
        # The weights of the commit just fetched: model.safetensors, or exactly the shards its index names
        # (a repository may hold the same weights again, as consolidated.safetensors or pickles).
        shards = _shards(folder) if (folder / INDEX).is_file() else ["model.safetensors"]
        if shards:
            snapshot_download(ref.repo_id, revision=folder.name, allow_patterns=shards, **common)
    except GatedRepoError:
        raise LoadError(f"{ref.repo_id} is gated: accept its terms on https://huggingface.co/{ref.repo_id} "
                        "and log in with `hf auth login`") from None  # fmt: skip
    except RepositoryNotFoundError:
        raise LoadError(f"no Hugging Face repository {ref.repo_id} (or it is private: log in with "
                        "`hf auth login`)") from None  # fmt: skip
    except RevisionNotFoundError:
        raise LoadError(f"{ref.repo_id} has no revision {ref.revision!r}") from None
    except LocalEntryNotFoundError as e:  # no connection, and nothing cached
        raise LoadError(f"{ref} could not be downloaded: the Hugging Face Hub could not be reached "
                        f"({_first_line(e)})") from None  # fmt: skip
    except (OSError, ValueError, HFValidationError) as e:  # HfHubHTTPError is an OSError
        raise LoadError(f"{ref} could not be downloaded ({type(e).__name__}: {_first_line(e)})") from None
    folder = _checked(folder, ref)
    lacks = missing(folder)
    if lacks:
        also = (" archplay downloads only safetensors weights, never pickled ones (.bin, .pt)"
                if any(s.startswith("the weights") for s in lacks) else "")  # fmt: skip
        raise LoadError(f"{ref} on the Hugging Face Hub lacks {' and '.join(lacks)}.{also}")
    return folder


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
