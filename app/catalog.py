"""The models the app offers: loaded once at start-up and shared, read-only, by every session.

Sessions only ever hold a catalog *key* (a built-in name, a folder or a Hugging Face id given on
the command line); the model objects live here, never in ``gr.State``. Keys come from the server's
own command line, or from a page's load box, which reaches only folders inside ``--models-dir`` and
repositories in the Hugging Face cache (downloaded only with ``--allow-downloads``), so a visitor
cannot make the server read an arbitrary path.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from archplay.models import BUILTIN_NAMES, LoadError, load, registry
from archplay.models.checkpoints import hub
from archplay.models.checkpoints.loading import fast_cpu_layout, load_repo, on_cpu
from archplay.models.registry import Family


class UnknownModelError(KeyError):
    """A key that the catalog does not hold; ``str()`` gives a readable message."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown model"


@dataclass(frozen=True)
class Entry:
    """One loaded model with its tokenizer and how the page names it."""

    key: str
    model: torch.nn.Module
    tokenizer: object
    label: str

    @property
    def config(self):
        return self.model.config

    @property
    def family(self) -> str:
        return self.model.config.family

    @property
    def spec(self) -> Family:
        """The family's registry entry: what it predicts and which views it has."""
        return registry.of(self.model)

    @property
    def trained(self) -> bool:
        return bool(getattr(self.model.config, "trained", True))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def describe(model) -> str:
    """The dropdown label: name, family and size, marked "(untrained)" for random weights."""
    cfg = model.config
    name = str(getattr(cfg, "name", "model"))
    trained = bool(getattr(cfg, "trained", True))
    if not trained and "untrained" not in name:
        name += " (untrained)"
    layers = f"{cfg.n_layer} layer{'s' if cfg.n_layer != 1 else ''}"
    n_head = getattr(cfg, "n_head", None)
    if n_head is None:  # a state-space model has no heads
        return f"{name} — {cfg.family}, {layers}"
    heads = f"{n_head} head{'s' if n_head != 1 else ''}"
    attending, scanning = getattr(cfg, "attention_blocks", None), getattr(cfg, "mamba_blocks", None)
    if attending is not None and scanning is not None:  # a hybrid: only some layers attend
        return f"{name} — {cfg.family}, {layers} ({len(attending)} attention × {heads}, {len(scanning)} Mamba)"
    return f"{name} — {cfg.family}, {layers} × {heads}"


class Catalog:
    """Loaded models by key, in the order they were added (the first is the default)."""

    def __init__(self, device: str | torch.device = "cpu", models_dir: str | Path | None = None, *,
                 allow_downloads: bool = False, dtype: str | None = None, device_map: str | None = None):  # fmt: skip
        self.device = torch.device(device)
        # how checkpoints load: "bf16" | "fp16" | "fp32" | None (each checkpoint's own; the built-ins' fp32),
        # and "auto" to spread a big model's layers over the GPUs and the CPU (accelerate)
        self.load_options = {"dtype": dtype, "device_map": device_map}
        self.models_dir = Path(models_dir).expanduser().resolve() if models_dir else None
        self.allow_downloads = allow_downloads  # may a page's load box download a repository not in the cache
        self.hub_ids = True  # may a page's load box load Hugging Face ids at all (a shared server: only if allowed)
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self.errors: list[str] = []  # start-up load failures, shown on the page
        self.preferred: str | None = None  # the page's initial choice; see default_key

    # ------------------------------------------------------------------ building

    def add(self, name_or_folder: str, *, root: Path | None = None) -> Entry:
        """Load a built-in name, a checkpoint folder (every file inside ``root``, when given) or a
        Hugging Face id (downloaded if need be: the server's own command line asked for it);
        raises ``LoadError`` with the reason."""
        key = _key(name_or_folder)
        if key in self._entries:
            return self._entries[key]
        return self._load(key, lambda: load(key, device=self.device, root=root, **self.load_options))

    def _load(self, key: str, loader: Callable[[], tuple]) -> Entry:
        try:
            model, tokenizer = loader()
        except LoadError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, OSError, RuntimeError, MemoryError) as e:
            # Whatever else a checkpoint breaks is still a load error: the server goes on with the rest.
            raise LoadError(f"{Path(key).name} could not be loaded ({type(e).__name__}: {e})") from None
        return self.put(key, model, tokenizer)

    def put(self, key: str, model: torch.nn.Module, tokenizer) -> Entry:
        """Offer a model that is already built (tests, or a program embedding the page) under ``key``."""
        model.eval()
        entry = Entry(key=key, model=model, tokenizer=tokenizer, label=describe(model))
        self._entries[key] = entry
        return entry

    def add_from_models_dir(self, name: str) -> Entry:
        """Load the checkpoint folder ``name`` inside the configured models directory (a page's request).

        ``name`` is untrusted: it must be a relative path that stays inside the directory once
        resolved (no ``..``, no absolute path, no symbolic link pointing out). Raises ``LoadError``
        with a message fit for the page.
        """
        folder = resolve_in(self.models_dir, name)
        with self._lock:
            return self.add(str(folder), root=self.models_dir)

    def add_by_name(self, name: str) -> Entry:
        """What a page's load box asks for: a checkpoint folder inside the models directory, else a
        Hugging Face id (``ORG/NAME``, optionally ``@REVISION``) read from the server's cache, or
        downloaded when the server allows downloads. ``name`` is untrusted: it never names a path
        outside the models directory or the repository's folder in the cache. Raises ``LoadError``
        with a message fit for the page (no server paths)."""
        name = str(name or "").strip()
        ref = hub.parse(name) if "\x00" not in name and len(name) <= MAX_FOLDER_NAME else None
        folder_error = None
        if self.models_dir is not None:
            if ref is None or os.path.lexists(self.models_dir / name):
                return self.add_from_models_dir(name)
            folder_error = f"no folder {name!r} in the models directory"
        if ref is None:
            what = f"{name[:80]!r} is not a Hugging Face id" if name else "give a Hugging Face id"
            raise LoadError(f"{what}: ORG/NAME, optionally @REVISION (e.g. EleutherAI/pythia-70m)")
        if not self.hub_ids:
            raise LoadError((f"{folder_error}; " if folder_error else "") + "this shared server loads Hugging Face "
                            "ids only when it was started with --allow-downloads")  # fmt: skip
        key = str(ref)
        with self._lock:
            if key in self._entries:
                return self._entries[key]
            try:
                return self._load(key, lambda: self._repo(ref))
            except LoadError as e:
                if folder_error and "/" not in ref.repo_id:  # a bare name: a folder was perhaps meant
                    raise LoadError(f"{folder_error}, and {e}") from None
                raise

    def _repo(self, ref: hub.RepoRef):
        model, tokenizer = load_repo(ref, self.device, allow_download=self.allow_downloads, server=True,
                                     **self.load_options)  # fmt: skip
        if on_cpu(model):
            fast_cpu_layout(model)
        return model, tokenizer

    def folders(self) -> list[str]:
        """What the load box offers: the checkpoint folders of the models directory (names relative to
        it), then the repositories the Hugging Face cache holds complete, of a supported type."""
        found = []
        if self.models_dir is not None and self.models_dir.is_dir():
            found = sorted(p.name for p in self.models_dir.iterdir() if p.is_dir() and (p / "config.json").is_file()
                           and p.resolve().is_relative_to(self.models_dir))  # fmt: skip
        return found + ([r for r in hub.cached_repos() if r not in found] if self.hub_ids else [])

    @property
    def loads_by_name(self) -> bool:
        """Whether the page shows its load box: a models directory, downloads allowed, or a cache to read."""
        return self.models_dir is not None or self.allow_downloads or (self.hub_ids and bool(hub.cached_repos(limit=1)))

    @classmethod
    def from_names(
        cls,
        names: Iterable[str] = (),
        device: str | torch.device = "cpu",
        *,
        builtins: tuple[str, ...] = BUILTIN_NAMES,
        log: Callable[[str], None] = print,
        models_dir: str | Path | None = None,
        allow_downloads: bool = False,
        dtype: str | None = None,
        device_map: str | None = None,
    ) -> Catalog:
        """The built-ins, then each of ``names``. A name that fails is logged and skipped.

        The first of ``names`` that loads becomes the default choice (the user asked for it). A
        Hugging Face id among ``names`` is downloaded when not cached (unless ``HF_HUB_OFFLINE``);
        ``allow_downloads`` is for the page's load box. ``dtype`` and ``device_map`` apply to every model
        loaded (see ``archplay.models.load``).
        """
        reg = cls(device, models_dir, allow_downloads=allow_downloads, dtype=dtype, device_map=device_map)
        builtins = tuple(builtins)
        for i, name in enumerate([*builtins, *names]):
            try:
                entry = reg.add(name)
            except LoadError as e:
                msg = f"could not load {name!r}: {e}"
                reg.errors.append(msg)
                log(f"archplay: {msg}")
                continue
            if i >= len(builtins) and reg.preferred is None:
                reg.preferred = entry.key
        return reg

    # ------------------------------------------------------------------ reading

    def get(self, key: str | None) -> Entry:
        if not key:
            raise UnknownModelError("Choose a model first.")
        try:
            return self._entries[key]
        except KeyError:
            offered = ", ".join(self._entries) or "none"
            raise UnknownModelError(f"Unknown model {key!r}; this server offers: {offered}.") from None

    def choices(self) -> list[tuple[str, str]]:
        """``(label, key)`` pairs for a dropdown."""
        return [(e.label, e.key) for e in self._entries.values()]

    @property
    def default_key(self) -> str | None:
        """The model a new page starts with: the first one given on the command line, else the
        first that continues text (the default text is a story to continue), else the first."""
        if self.preferred in self._entries:
            return self.preferred
        for entry in self._entries.values():
            if entry.spec.objective == "causal":
                return entry.key
        return next(iter(self._entries), None)

    def keys(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)


MAX_FOLDER_NAME = 200  # characters of a name typed in the load box (file systems stop at 255 bytes a name)


def resolve_in(models_dir: Path | None, name: str) -> Path:
    """``name`` as a folder inside ``models_dir``, or ``LoadError`` saying why not."""
    if models_dir is None:
        raise LoadError("this server has no models directory (start it with --models-dir DIR to load by name)")
    name = str(name or "").strip()
    if not name or "\x00" in name:
        raise LoadError("give the name of a checkpoint folder inside the models directory")
    if len(name) > MAX_FOLDER_NAME:
        raise LoadError(f"a folder name has at most {MAX_FOLDER_NAME} characters; this one has {len(name):,}")
    candidate = Path(name)
    if candidate.is_absolute() or ".." in candidate.parts:
        raise LoadError(f"{name!r} is not a folder name inside the models directory")
    try:
        folder = (models_dir / candidate).resolve()
        if not folder.is_relative_to(models_dir):
            raise LoadError(f"{name!r} leads outside the models directory")
        if not folder.is_dir():
            raise LoadError(f"no folder {name!r} in the models directory")
    except OSError as e:  # a name the file system refuses (too long a part, a loop of links)
        raise LoadError(f"{name[:80]!r} is not a folder this server can open ({e.strerror or type(e).__name__})") from None
    return folder


def _key(name_or_folder: str) -> str:
    """Built-in names stay as they are; folders become absolute paths, so duplicates collapse."""
    name = str(name_or_folder)
    if name in BUILTIN_NAMES:
        return name
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name
