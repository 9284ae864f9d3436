"""``load(name | folder | hub id)``: the built-in models, a local Hugging Face checkpoint folder, or a
repository id read through the Hugging Face cache (``hub``).

A folder needs ``config.json``, weights (``model.safetensors``, sharded safetensors with
their index, or ``pytorch_model.bin`` read with ``torch.load(weights_only=True)``: never a
plain pickle load, so a checkpoint cannot run code) and the tokenizer files.

Each supported ``model_type`` has a converter, listed by its family's registry entry
(``archplay.models.registry``): it turns the checkpoint's config into ours and renames (and, for
GPT-2, transposes and splits) its tensors into our modules' names. Anything that does not fit is
reported with what is wrong and what is supported.

Nothing is allocated before it is checked: the config's sizes against ``LIMITS``, then the
model built on the ``meta`` device (shapes, no memory) against the shapes the weight files
declare in their headers, and only then the real model and its weights. A folder loaded for
a visitor (``root``) reads no file that resolves outside ``root``.

Big checkpoints (``materialize``): the real model is built with its parameters on the ``meta``
device too (no memory, no random init; the tables it computes, such as RoPE frequencies, are
computed as usual), then each stored tensor is read on its own (safetensors shard by shard,
straight into its own buffer), renamed, cast to the dtype asked for (the checkpoint's own by
default: config.json's ``dtype`` / ``torch_dtype``) and put in place: the peak memory is about the
weights' size plus one tensor, not twice the weights. ``device_map="auto"`` places the layers over
the GPUs and the CPU through ``accelerate``.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from archplay.models import registry
from archplay.models.checkpoints.assets import ASSETS
from archplay.models.checkpoints.convert import LoadError
from archplay.models.story.tokenizer import HFTokenizer, SPTokenizer

BUILTIN_NAMES = ("gpt", "bert", "t5", "moe", "mamba")
# The largest size a checkpoint's config may declare, per config field (far above any published
# model; they bound the work of building even a shape-only skeleton), and the most blocks
# (layers, times experts per layer) a skeleton may have.
LIMITS = {
    "vocab_size": 1 << 21, "d_model": 1 << 17, "d_ff": 1 << 19, "d_expert": 1 << 19, "d_inner": 1 << 19,
    "n_layer": 1024, "n_decoder_layer": 1024, "n_head": 4096, "n_kv_head": 4096, "head_dim": 1 << 12,
    "d_kv": 1 << 12, "n_experts": 1024, "top_k": 1024, "d_state": 1 << 12, "d_conv": 64,
    "max_seq_len": 1 << 22, "type_vocab_size": 1 << 10,
}  # fmt: skip
MAX_BLOCKS = 1 << 16
BUFFER_LIMIT = 1 << 28  # elements of tables the model computes rather than reads (e.g. sinusoidal positions)


# --------------------------------------------------------------------------- reading a folder


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise LoadError(f"{folder} has no config.json; a Hugging Face checkpoint folder needs one")
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LoadError(f"{path} could not be read as JSON: {e}") from None
    if not isinstance(hf, dict):
        raise LoadError(f"{path} does not hold a JSON object")
    return hf


def _inside(path: Path, root: Path | None, what: str) -> Path:
    """``path`` if it (after following links) stays inside ``root``; LoadError otherwise."""
    if root is not None and not path.resolve().is_relative_to(root.resolve()):
        raise LoadError(f"{what} leads outside the folder it was loaded from")
    return path


def _weight_files(folder: Path, root: Path | None) -> list[Path]:
    """The weight files to read: one safetensors file, the shards an index names, or pytorch_model.bin.

    Shard names are plain file names inside ``folder`` (no ``..``, no absolute path); with ``root``,
    every file must also resolve inside it (a Hugging Face cache's snapshot links into its own
    blobs do)."""
    single, index, pt = folder / "model.safetensors", folder / "model.safetensors.index.json", folder / "pytorch_model.bin"
    if single.is_file():
        return [_inside(single, root, single.name)]
    if index.is_file():
        try:
            weight_map = json.loads(_inside(index, root, index.name).read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise LoadError(f"{index.name} could not be read: {type(e).__name__}: {e}") from None
        files = []
        for shard in shards:
            name = Path(str(shard))
            if name.is_absolute() or len(name.parts) != 1 or name.name in ("", ".", ".."):
                raise LoadError(f"{index.name} names a shard outside its folder: {str(shard)[:80]!r}")
            files.append(_inside(folder / name, root, f"the shard {name.name}"))
        return files
    if pt.is_file():
        return [_inside(pt, root, pt.name)]
    raise LoadError(
        f"{folder} has no weights: expected model.safetensors, model.safetensors.index.json "
        "with its shards, or pytorch_model.bin"
    )


def _read_weights(files: list[Path], *, shapes_only: bool = False) -> dict[str, Tensor]:
    """Every tensor the files hold; with ``shapes_only``, ``meta`` tensors of the declared shapes
    (read from the safetensors headers, or a memory-mapped pytorch_model.bin: no data is loaded)."""
    return dict(_iter_weights(files, shapes_only=shapes_only))


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                       "BOOL": torch.bool}  # fmt: skip


def _iter_weights(files: list[Path], *, shapes_only: bool = False, mapped=None) -> Iterator[tuple[str, Tensor]]:
    """(name, tensor) of every tensor the files hold, one at a time. A safetensors tensor is read into
    its own buffer (``pread``: no mapping of the file stays behind it), so a caller that renames or
    casts it as it comes holds one extra tensor at most; or, when ``mapped(name, meta tensor of its
    shape and dtype)`` says so (the tensor will be used as it is stored), it is a view of the file
    mapped in memory: nothing is read until it is used, and the kernel may page it out again.
    pytorch_model.bin is read whole (``weights_only``), memory-mapped for ``shapes_only``."""
    from safetensors import safe_open

    try:
        for path in files:
            if path.suffix == ".bin":
                mmap = shapes_only and zipfile.is_zipfile(path)  # the legacy (non-zip) format cannot be mapped
                loaded = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
                if not isinstance(loaded, dict) or not all(isinstance(v, Tensor) for v in loaded.values()):
                    raise LoadError(f"{path.name} does not hold a state dict of tensors")
                while loaded:
                    key, t = loaded.popitem()
                    yield key, (t.to("meta") if shapes_only else t)
                continue
            if not path.is_file():
                raise LoadError(f"the shard {path.name} is missing")
            with _safe_open(safe_open, path) as f:
                view = None  # the mapped file, opened at its first mapped tensor
                for key in f.keys():
                    sl = f.get_slice(key)
                    meta = torch.empty(sl.get_shape(), dtype=_SAFETENSORS_DTYPES.get(sl.get_dtype(), torch.uint8),
                                       device="meta")  # fmt: skip
                    if shapes_only:
                        yield key, meta
                    elif mapped is not None and mapped(key, meta):
                        view = safe_open(str(path), framework="pt") if view is None else view
                        yield key, view.get_tensor(key)
                    else:
                        yield key, f.get_tensor(key)
    except LoadError:
        raise
    except Exception as e:  # truncated, corrupt or code-carrying files all end up here
        raise LoadError(f"the weights in {files[0].parent.name or files[0].parent} could not be read "
                        f"({type(e).__name__}: {e})") from None  # fmt: skip


def _reads_as_stored(conv, skeleton: nn.Module, finished: set[str], dtype: torch.dtype, relaid: set[str],
                     cpu: bool):  # fmt: skip
    """``mapped`` for ``_iter_weights``: map a stored tensor only when it is used as it is: renamed
    to views that ``materialize`` keeps (contiguous ones; for float32 on the CPU also column-major ones,
    e.g. GPT-2's transposed Conv1D weights), not replaced by the converter's ``finish``, already in
    ``dtype``, and not relaid out for the CPU (``relaid``, unless already column-major). Anything else
    is read into memory, so a copy never leaves the file's pages resident behind it."""
    own = skeleton.state_dict()
    transposed_ok = cpu and dtype == torch.float32

    def mapped(key: str, meta: Tensor) -> bool:
        if meta.is_floating_point() and meta.dtype != dtype:
            return False
        out = conv.rename(key, meta)
        return bool(out) and all(
            (t is meta or t._base is meta) and name in own and name not in finished
            and (name not in relaid or column_major(t))  # stored column-major: fast_cpu_layout leaves it
            and (t.is_contiguous() or transposed_ok and column_major(t))
            for name, t in out.items()
        )  # fmt: skip

    return mapped


class _Trimmer:
    """Hands freed memory back to the system every ``every`` bytes of short-lived copies (glibc's
    ``malloc_trim``; elsewhere nothing). A tensor freed after it was copied (transposed, split, cast,
    relaid out) goes back to malloc, not to the system, and the next, differently sized tensors leave
    its pages held: measured on a GPT-2-sized checkpoint, about a fifth of the weights' size more at
    the peak without it."""

    _libc = None

    def __init__(self, every: int = 16 << 20):
        self.every, self.pending = every, 0

    def freed(self, nbytes: int) -> None:
        self.pending += nbytes
        if self.pending >= self.every:
            self.pending = 0
            _malloc_trim()


def _malloc_trim() -> None:
    if _Trimmer._libc is None:
        _Trimmer._libc = False
        try:
            import ctypes
            import platform

            if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
                _Trimmer._libc = ctypes.CDLL("libc.so.6")
        except (OSError, AttributeError, ValueError):
            pass
    if _Trimmer._libc:
        _Trimmer._libc.malloc_trim(0)


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def _safe_open(safe_open, path: Path):
    """``safe_open`` reading each tensor with ``pread`` into its own memory (safetensors >= 0.7); older
    versions map the file (the tensors then share the mapping, which the kernel may page out)."""
    try:
        return safe_open(str(path), framework="pt", backend="pread")
    except TypeError:  # no ``backend`` argument
        return safe_open(str(path), framework="pt")


def check_limits(cfg) -> None:
    """LoadError naming the first config field above ``LIMITS``, or a skeleton with too many blocks."""
    for field, limit in LIMITS.items():
        value = getattr(cfg, field, None)
        if isinstance(value, int) and value > limit:
            raise LoadError(f"config.json declares {field} = {value:,}, above the limit of {limit:,} this loader accepts")
    blocks = (getattr(cfg, "n_layer", 0) + (getattr(cfg, "n_decoder_layer", 0) or 0)) * max(1, getattr(cfg, "n_experts", 1))
    if blocks > MAX_BLOCKS:
        raise LoadError(f"config.json declares {blocks:,} blocks (layers × experts), above the limit of {MAX_BLOCKS:,}")


def check_fit(model: nn.Module, state: dict[str, Tensor], folder: Path) -> None:
    """LoadError unless ``state`` has every weight of ``model`` (real or ``meta``), nothing else, in its shapes.

    A tied weight (the output head sharing the embedding matrix) may be stored under
    only one of its names, as transformers does.
    """
    own = model.state_dict()
    tied: dict[int, list[str]] = {}
    for name, p in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        tied.setdefault(id(p), []).append(name)
    aliases = {name: names for names in tied.values() for name in names}
    missing = [k for k in own if not any(a in state for a in aliases.get(k, [k]))]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs config {tuple(own[k].shape)}"
             for k in state if k in own and state[k].shape != own[k].shape]  # fmt: skip
    problems = []
    if missing:
        problems.append(f"missing tensors {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors {_few(unexpected)}")
    if wrong:
        problems.append(f"shapes that do not fit the config: {_few(wrong)}")
    if problems:
        raise LoadError(f"the weights in {folder.name} do not fit its config.json: " + "; ".join(problems))


# --------------------------------------------------------------------------- dtype, meta build, placement

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# config.json's "dtype" (transformers 5) or "torch_dtype" (older) -> ours; anything else loads in fp32
_CONFIG_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_MAPS = ("auto",)


def resolve_dtype(dtype: str | torch.dtype | None, hf: dict | None = None) -> torch.dtype:
    """The dtype to load in: ``dtype`` ("bf16", "fp16", "fp32", or a torch dtype of those), or for
    None / "auto" the checkpoint's own (config.json's ``dtype`` / ``torch_dtype``; fp32 when absent)."""
    if dtype is None or dtype == "auto":
        declared = (hf or {}).get("dtype") or (hf or {}).get("torch_dtype")
        return _CONFIG_DTYPES.get(str(declared).removeprefix("torch."), torch.float32)
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise LoadError(f"dtype {dtype!r} is not supported; give one of {', '.join(DTYPES)} or auto (the checkpoint's own)")


# In-place initialisers: on a ``meta`` tensor they change nothing, yet torch runs them through its Python
# reference kernels (a 1 B model's init took 0.2 s per build that way); a meta build skips them.
_META_NOOPS = frozenset({"normal_", "uniform_", "zero_", "fill_", "erfinv_", "mul_", "add_", "clamp_", "copy_",
                         "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_", "trunc_normal_",
                         "ones_", "zeros_", "constant_", "orthogonal_"})  # fmt: skip


class _EmptyOnMeta(TorchFunctionMode):
    """While building: ``torch.empty`` (what ``nn.Linear``, ``nn.Embedding``, ``nn.Conv1d`` allocate their
    weights with) makes ``meta`` tensors, and initialising a meta tensor is skipped, so the random init
    touches nothing; every other tensor (the tables a model computes, e.g. RoPE frequencies,
    sinusoids) is computed as usual. ``empty=False``: only the skipping (inside ``torch.device("meta")``).
    A mode, not a patch: it applies to this thread only."""

    def __init__(self, empty: bool = True):
        super().__init__()
        self.empty = empty

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = args[0] if args else kwargs.get("tensor")  # nn.init's functions pass their tensor by name
        if isinstance(target, Tensor) and target.is_meta and getattr(func, "__name__", "") in _META_NOOPS:
            return target
        if self.empty and func is torch.empty and kwargs.get("device") is None:
            kwargs = {**kwargs, "device": "meta"}
        return func(*args, **kwargs)


def materialize(build, state: dict[str, Tensor], folder: Path, *, dtype: torch.dtype = torch.float32,
                device: str | torch.device = "cpu", device_map: str | dict | None = None,
                max_memory: dict | None = None) -> nn.Module:  # fmt: skip
    """``build()`` with no parameter memory, then filled with ``state`` (checked against it first),
    consumed one tensor at a time: each is cast to ``dtype`` (floating tensors, only when it differs)
    and moved to its device (``device``, or the layer's under ``device_map``) before the next. Tied
    weights stay one Parameter. The model's computed buffers are kept (moved along); a buffer the
    meta build could not compute is taken from an ordinary build."""
    with torch.no_grad(), _EmptyOnMeta():
        model = build()
    check_fit(model, state, folder)
    places = plan_devices(model, device, device_map, max_memory, dtype)
    owners: dict[int, list[tuple[nn.Module, str, str]]] = {}  # one entry per Parameter, all its names
    for prefix, module in model.named_modules(remove_duplicate=False):
        for name, p in module._parameters.items():
            if p is not None:
                owners.setdefault(id(p), []).append((module, name, f"{prefix}.{name}" if prefix else name))
    trimmer = _Trimmer()
    with torch.no_grad():
        for names in owners.values():
            keys = [full for _, _, full in names if full in state]
            stored = {k: state.pop(k) for k in keys}
            first = stored[keys[0]]
            # a tied weight stored under several names keeps one copy; stored with other values (a head
            # trained apart from its embedding), each is its own, as transformers unties them
            apart = {k for k in keys[1:] if not _same(stored[k], first)}
            for k in apart:
                _fill([n for n in names if n[2] == k], stored.pop(k), dtype, places, trimmer)
            if apart and isinstance(getattr(getattr(model, "config", None), "tie_embeddings", None), bool):
                model.config.tie_embeddings = False
            del stored
            _fill([n for n in names if n[2] not in apart], first, dtype, places, trimmer)
            del first
        for k in list(state):  # what is left: persistent buffers the checkpoint stores
            _set_buffer(model, k, state.pop(k))
        stale = [n for n, b in model.named_buffers() if b.is_meta]
        if stale:  # a buffer made with torch.empty and filled in place: an ordinary build knows it
            reference = dict(build().named_buffers())
            for n in stale:
                _set_buffer(model, n, reference[n])
        for prefix, module in model.named_modules():
            for name, b in module._buffers.items():
                if b is not None:
                    module._buffers[name] = b.to(_place(places, f"{prefix}.{name}" if prefix else name))
    if device_map is not None:
        _dispatch(model, places)
    return model.eval()


def _same(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and (a.data_ptr() == b.data_ptr() or torch.equal(a, b))


def _fill(names: list[tuple[nn.Module, str, str]], t: Tensor, dtype: torch.dtype, places: dict, trimmer) -> None:
    """One Parameter from the stored ``t`` (cast to ``dtype`` if floating, moved to its place) under ``names``."""
    if t.is_floating_point() and t.dtype != dtype:
        trimmer.freed(_nbytes(t))
        t = t.to(dtype)
    target = torch.device(_place(places, names[0][2]))
    if t.device != target:
        trimmer.freed(_nbytes(t))
        t = t.to(target)
    if not t.is_contiguous() and not (t.device.type == "cpu" and t.dtype == torch.float32 and column_major(t)):
        t = t.contiguous()  # column-major (a converter's transposed weight) pays only for fp32 on the CPU
    module, name, _ = names[0]
    param = nn.Parameter(t, requires_grad=module._parameters[name].requires_grad)
    for module, name, _ in names:
        module._parameters[name] = param


def column_major(t: Tensor) -> bool:
    """Whether a 2-D ``t`` (out, in) is the transpose of a row-major matrix, possibly rows of a wider one (e.g.
    q, k and v as views of GPT-2's fused c_attn): the layout BLAS multiplies by directly (``x @ t.T``)."""
    return t.dim() == 2 and t.stride(0) == 1 and t.stride(1) >= max(1, t.shape[0])


def _set_buffer(model: nn.Module, name: str, value: Tensor) -> None:
    owner, _, leaf = name.rpartition(".")
    model.get_submodule(owner)._buffers[leaf] = value


def plan_devices(model: nn.Module, device, device_map: str | dict | None, max_memory: dict | None,
                 dtype: torch.dtype) -> dict[str, str | torch.device]:  # fmt: skip
    """{module name prefix: device}: everything on ``device``, or ``accelerate``'s placement of the
    (meta-built) model over the GPUs and the CPU for ``device_map="auto"`` (blocks kept whole; at most
    ``max_memory`` per device, e.g. ``{0: "20GiB", "cpu": "60GiB"}``), or a map given as a dict."""
    if device_map is None:
        return {"": torch.device(device)}
    if isinstance(device_map, dict):
        return dict(device_map)
    if device_map not in DEVICE_MAPS:
        raise LoadError(f"device_map {device_map!r} is not supported; give auto (accelerate's placement) or None")
    try:
        from accelerate import infer_auto_device_map
    except ImportError:
        raise LoadError("device_map='auto' places layers with accelerate, which is not installed: "
                        "pip install 'archplay[big]' (or pip install 'accelerate>=1.1.0')") from None  # fmt: skip
    blocks = sorted({type(m).__name__ for lst in model.modules() if isinstance(lst, nn.ModuleList) for m in lst})
    places = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=blocks, dtype=dtype)
    if "disk" in places.values():
        raise LoadError("the model does not fit in the GPUs and the CPU memory together (accelerate would put "
                        "layers on disk, which archplay does not do); give a smaller dtype or more max_memory")  # fmt: skip
    return places


def _place(places: dict, name: str):
    """The device of the longest prefix of ``name`` in ``places`` ("" matches everything)."""
    while True:
        if name in places:
            return places[name]
        if not name:
            raise LoadError("the device map leaves part of the model without a device")
        name = name.rpartition(".")[0]


def _dispatch(model: nn.Module, places: dict) -> None:
    """``accelerate.dispatch_model``: hooks that move each block's inputs to its device (nothing on one device)."""
    from accelerate import dispatch_model

    dispatch_model(model, device_map=places)
    model.device_map = places  # what the caller (and the page) can show


def _few(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def load_folder(folder: str | Path, device: str | torch.device = "cpu", *, root: str | Path | None = None,
                dtype: str | torch.dtype | None = None, device_map: str | dict | None = None,
                max_memory: dict | None = None):  # fmt: skip
    """A Hugging Face checkpoint folder -> (model, tokenizer), checked before anything is built.

    ``root`` (a folder a visitor named, inside the server's models directory): every file of the
    folder must resolve inside ``root``, and messages name paths relative to it. ``dtype``: "bf16",
    "fp16", "fp32", or None / "auto" for the checkpoint's own. ``device_map="auto"`` (with
    ``max_memory``): layers placed over the GPUs and the CPU by ``accelerate`` (see ``materialize``).
    """
    folder = Path(folder).expanduser()
    place = dict(dtype=dtype, device_map=device_map, max_memory=max_memory)
    if root is None:
        return _load_folder(folder, device, None, **place)
    root = Path(root)
    try:
        return _load_folder(folder, device, root, **place)
    except LoadError as e:
        message = str(e)
        for prefix in sorted({str(root.resolve()), str(root)}, key=len, reverse=True):
            message = message.replace(prefix + os.sep, "").replace(prefix, "the models directory")
        raise LoadError(message) from None


def _load_folder(folder: Path, device, root: Path | None, *, dtype=None, device_map=None, max_memory=None):
    if not folder.exists():
        raise LoadError(f"no such folder: {folder}")
    if not folder.is_dir():
        raise LoadError(f"{folder} is not a folder; give a Hugging Face checkpoint folder")
    if root is not None:  # config, weights, tokenizer files: none may be a link out
        for entry in folder.iterdir():
            _inside(entry, root, entry.name)
    hf = _read_config(folder)
    place = dict(device=device, device_map=device_map, max_memory=max_memory)
    if hf.get("format") == BUILTIN_FORMAT:  # archplay's own (archplay-train, the Lab), with the same checks
        return _load_archplay(folder, hf, root, dtype=resolve_dtype(dtype), **place)
    dtype = resolve_dtype(dtype, hf)
    mtype = hf.get("model_type")
    found = registry.checkpoint(mtype) if isinstance(mtype, str) else None
    if found is None:
        raise LoadError(
            f"{folder}: model_type {mtype!r} is not supported; supported: {', '.join(registry.model_types())}"
        )
    family, conv = found
    try:
        cfg = conv.make_config(hf, folder.name)
    except KeyError as e:
        raise LoadError(f"{folder}/config.json lacks {e.args[0]!r}, which {mtype} needs") from None
    except LoadError:
        raise
    except (TypeError, ValueError) as e:
        raise LoadError(f"{folder}/config.json is not a valid {mtype} config: {e}") from None
    check_limits(cfg)
    files = _weight_files(folder, root)
    declared = conv.convert_state(_read_weights(files, shapes_only=True))
    renamed = set(declared)
    if conv.finish is not None:
        conv.finish(cfg, declared)
    skeleton = _check_skeleton(family, cfg, declared, folder, mtype)
    finished = renamed - set(declared)  # replaced by the converter's finish (e.g. fused q/k/v split)
    cpu = device_map is None and torch.device(device).type == "cpu"
    relaid = set(_widening(skeleton)) if cpu and dtype == torch.float32 else set()
    mapped = _reads_as_stored(conv, skeleton, finished, dtype, relaid, cpu)
    del declared, skeleton
    state: dict[str, Tensor] = {}
    trimmer = _Trimmer()
    for key, t in _iter_weights(files, mapped=mapped):  # renamed as read: a transposed or split copy replaces its source
        out = conv.rename(key, t)
        if any(v.untyped_storage().data_ptr() != t.untyped_storage().data_ptr() for v in out.values()):
            trimmer.freed(_nbytes(t))
        state.update(out)
        del t, out
    if conv.finish is not None:
        conv.finish(cfg, state)
    model = materialize(lambda: family.build(cfg), state, folder, dtype=dtype, **place)
    tokenizer = _load_tokenizer(folder, cfg.vocab_size)
    return model, tokenizer


def _check_skeleton(family, cfg, declared: dict[str, Tensor], folder: Path, what: str) -> nn.Module:
    """The model as the config declares it, built on the ``meta`` device (shapes, no memory), against
    the shapes the weight files declare: LoadError before any data is read. Returns the skeleton."""
    try:
        with torch.device("meta"), _EmptyOnMeta(empty=False):
            skeleton = family.build(cfg)
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as e:  # e.g. an unknown activation
        raise LoadError(f"{folder}/config.json is not a valid {what} config: {e}") from None
    buffers = sum(b.numel() for b in skeleton.buffers())
    if buffers > BUFFER_LIMIT:
        raise LoadError(f"config.json makes the model compute {buffers:,} table entries; the limit is {BUFFER_LIMIT:,}")
    check_fit(skeleton, declared, folder)
    return skeleton


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")


def _load_tokenizer(folder: Path, vocab_size: int) -> HFTokenizer:
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise LoadError(f"the tokenizer in {folder} could not be loaded: none of {', '.join(TOKENIZER_FILES)} is there")
    try:
        tokenizer = HFTokenizer(folder)
    except Exception as e:
        raise LoadError(f"the tokenizer in {folder} could not be loaded ({type(e).__name__}: {e})") from None
    if not 0 < tokenizer.vocab_size <= vocab_size:
        raise LoadError(
            f"the tokenizer in {folder} has {tokenizer.vocab_size} tokens, which does not fit "
            f"the model's vocabulary of {vocab_size}"
        )
    return tokenizer


BUILTIN_DIR = ASSETS / "checkpoints"
BUILTIN_FORMAT = "archplay-builtin/1"  # config.json's "format" in a folder save_builtin wrote


def save_builtin(model: nn.Module, tokenizer, folder: str | Path, *, training: dict | None = None) -> Path:
    """Write a built-in checkpoint: ``config.json`` (family, config, tokenizer wrapping and its
    fingerprint), ``model.safetensors`` (tied weights stored once) and ``training.json``."""
    from safetensors.torch import save_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    meta = {
        "format": BUILTIN_FORMAT,
        "family": cfg.family,
        "config": {k: v for k, v in cfg.to_dict().items() if k != "family"},
        "tokenizer": {"prefix": list(tokenizer.prefix), "suffix": list(tokenizer.suffix),
                      "sha256": tokenizer.fingerprint()},
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    for param in model.parameters():  # safetensors writes contiguous tensors (see fast_cpu_layout)
        if not param.data.is_contiguous():
            param.data = param.data.contiguous()
    save_model(model, str(folder / "model.safetensors"))
    if training is not None:
        (folder / "training.json").write_text(json.dumps(training) + "\n", encoding="utf-8")
    return folder


def _builtin_meta(folder: Path, meta: dict | None = None):
    """(family, config, tokenizer) of a ``save_builtin`` folder; LoadError when anything is off."""
    try:
        meta = meta if meta is not None else json.loads((folder / "config.json").read_text(encoding="utf-8"))
        family = registry.get(meta["family"])
        cfg = family.config.from_dict(meta["config"])
        wrap, fingerprint = meta["tokenizer"], meta["tokenizer"]["sha256"]
        prefix, suffix = tuple(str(t) for t in wrap["prefix"]), tuple(str(t) for t in wrap["suffix"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise LoadError(f"the archplay checkpoint in {folder} is damaged ({type(e).__name__}: {e}); retrain it with "
                        "archplay-train or python -m archplay.models.training.train") from None  # fmt: skip
    try:
        tok = SPTokenizer.builtin(prefix=prefix, suffix=suffix)
    except (KeyError, ValueError) as e:
        raise LoadError(f"{folder}/config.json wraps texts in tokens the built-in vocabulary lacks ({e})") from None
    if tok.fingerprint() != fingerprint:
        raise LoadError(f"{folder} was trained with another tokenizer than assets/tokenizer/; retrain it")
    return family, cfg, tok


def _load_archplay(folder: Path, meta: dict, root: Path | None, **place):
    """A ``save_builtin`` folder that is not a built-in: its config within the limits and its weights
    checked against it (shapes, from the file's header) before anything is built."""
    family, cfg, _ = _builtin_meta(folder, meta)
    check_limits(cfg)
    files = _weight_files(folder, root)
    if [f.name for f in files] != ["model.safetensors"]:
        raise LoadError(f"{folder} is an archplay checkpoint: its weights are model.safetensors")
    _check_skeleton(family, cfg, _read_weights(files, shapes_only=True), folder, family.name)
    return load_builtin(folder, **place)


def load_builtin(folder: str | Path, device: str | torch.device = "cpu", *, dtype: str | torch.dtype | None = None,
                 device_map: str | dict | None = None, max_memory: dict | None = None):  # fmt: skip
    """A checkpoint written by ``save_builtin`` -> (model, tokenizer), in fp32 unless ``dtype`` says otherwise."""
    folder = Path(folder)
    family, cfg, tok = _builtin_meta(folder)
    path = folder / "model.safetensors"
    if not path.is_file():
        raise LoadError(f"{folder} has no model.safetensors")
    state = dict(_iter_weights([path]))
    try:
        model = materialize(lambda: family.build(cfg), state, folder, dtype=resolve_dtype(dtype), device=device,
                            device_map=device_map, max_memory=max_memory)  # fmt: skip
    except LoadError as e:
        raise LoadError(f"the weights in {folder} do not fit its config: {e}") from None
    return model, tok


def load(name: str | Path, device: str | torch.device = "cpu", *, root: str | Path | None = None,
         allow_download: bool = True, dtype: str | torch.dtype | None = None, device_map: str | dict | None = None,
         max_memory: dict | None = None):  # fmt: skip
    """A built-in model by name, a local Hugging Face checkpoint folder, or a Hugging Face repository
    id (``ORG/NAME``, optionally ``@REVISION``) -> (model, tokenizer).

    A name that is an existing folder is that folder. A repository id is read from the Hugging Face
    cache; one not there is downloaded (config, tokenizer, safetensors weights) when
    ``allow_download`` and ``HF_HUB_OFFLINE`` is not set, as ``from_pretrained`` would; otherwise the
    LoadError says how to get it (see ``archplay.models.checkpoints.hub``). A bare ``NAME`` that is no
    built-in is looked up in the cache only.

    ``root``: a folder's files must all resolve inside it (see ``load_folder``). ``dtype``: "bf16",
    "fp16", "fp32" or None / "auto", the checkpoint's own (the built-ins': fp32). ``device_map="auto"``
    places the layers over the GPUs and the CPU through ``accelerate`` (at most ``max_memory`` per
    device, e.g. ``{0: "20GiB", "cpu": "60GiB"}``); ``device`` is then unused. On the CPU the
    model's widening projections are laid out for fast inference (``fast_cpu_layout``).
    """
    from archplay.models.checkpoints import hub

    place = dict(dtype=dtype, device_map=device_map, max_memory=max_memory)
    ref = hub.parse(name) if isinstance(name, str) and not Path(name).expanduser().exists() else None
    if isinstance(name, str) and name in BUILTIN_NAMES:
        if not (BUILTIN_DIR / name / "config.json").is_file():
            raise LoadError(f"the built-in {name!r} is missing from {BUILTIN_DIR}; "
                            f"train it with: python -m archplay.models.training.train --model {name}")  # fmt: skip
        model, tokenizer = load_builtin(BUILTIN_DIR / name, device, **place)
    elif ref is not None and ("/" in ref.repo_id or hub.cached(ref) is not None):
        try:
            model, tokenizer = load_repo(ref, device, allow_download=allow_download, **place)
        except LoadError as e:
            if str(e).startswith("no Hugging Face repository"):  # perhaps a folder was meant
                raise LoadError(f"no such folder: {name}; and {e}") from None
            raise
    elif isinstance(name, str) and not any(c in name for c in "/\\.") and not Path(name).exists():
        raise LoadError(
            f"unknown model {name!r}: built-ins are {', '.join(BUILTIN_NAMES)}; "
            "or give the path of a Hugging Face checkpoint folder, or a Hugging Face id ORG/NAME"
        )
    else:
        model, tokenizer = load_folder(name, device, root=root, **place)
    if on_cpu(model):
        fast_cpu_layout(model)
    return model, tokenizer


def on_cpu(model: nn.Module) -> bool:
    """Whether every weight of ``model`` is on the CPU (and no device map moves them at run time)."""
    return all(p.device.type == "cpu" for p in model.parameters())


def load_repo(ref, device: str | torch.device = "cpu", *, allow_download: bool, server: bool = False,
              dtype: str | torch.dtype | None = None, device_map: str | dict | None = None,
              max_memory: dict | None = None):  # fmt: skip
    """The Hugging Face repository ``ref`` (an id or a ``hub.RepoRef``) -> (model, tokenizer), read
    from its snapshot in the cache (fetched first when allowed: ``hub.resolve``) with the checks of
    ``load_folder``; every file must resolve inside the repository's own folder of the cache, and
    messages name the repository rather than the snapshot's path."""
    from archplay.models.checkpoints import hub

    ref = hub.parse(str(ref))
    folder = hub.resolve(str(ref), allow_download=allow_download, server=server)
    try:
        model, tokenizer = _load_folder(folder, device, hub.repo_root(ref), dtype=dtype, device_map=device_map,
                                        max_memory=max_memory)  # fmt: skip
    except LoadError as e:
        message = str(e)
        for prefix in sorted({str(folder.resolve()), str(folder)}, key=len, reverse=True):
            message = message.replace(prefix, str(ref))
        raise LoadError(message) from None
    model.config.name = str(ref)  # not the snapshot's folder name (a commit hash)
    return model, tokenizer


def fast_cpu_layout(model: nn.Module) -> nn.Module:
    """Store each widening ``nn.Linear`` weight (out ≥ in, e.g. q/k/v, the MLP's up and gate) column-major.

    Same values, same shape (out, in), only the memory order changes: ``F.linear`` multiplies by
    ``W.T``, which is then contiguous, so the CPU's BLAS runs the (in, out) layout that GPT-2's own
    Conv1D uses. For one token at a time (generation) that is markedly faster on x86 CPUs (measured
    here: 768 → 2304 in 394 µs against 586, 768 → 3072 in 440 against 737); narrowing projections
    are faster as they are and stay. Embeddings and the LM head (often tied to them) are untouched.
    Float32 weights only: in bf16 and fp16 the CPU's kernels for the column-major layout are far slower
    (measured here: 2048 → 8192 for one token, bf16, 411 ms against 11 row-major).
    """
    trimmer = _Trimmer()  # one matrix copied at a time, its old layout given back as it goes
    for module in _widening(model).values():
        w = module.weight
        if w.dtype == torch.float32 and w.is_contiguous():
            module.weight = nn.Parameter(w.detach().t().contiguous().t(), requires_grad=w.requires_grad)
            trimmer.freed(_nbytes(w))
            del w
    return model


def _widening(model: nn.Module) -> dict[str, nn.Linear]:
    """{weight name: module} of the ``nn.Linear`` maps ``fast_cpu_layout`` relays: out ≥ in, not the LM
    head, not tied to an embedding (tied stays tied)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return {f"{name}.weight": module for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and name.split(".")[-1] != "lm_head"
            and module.weight.shape[0] >= module.weight.shape[1] and id(module.weight) not in embeddings}  # fmt: skip
