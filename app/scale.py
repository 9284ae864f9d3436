"""The Scale tab: what a configuration costs at full size (parameters, FLOPs, KV cache, memory per GPU),
two to four side by side, under one set of settings (inference or training, dtype, batch and context,
optimizer, ZeRO, data / tensor / pipeline parallelism).

Everything comes from ``archplay.models.analysis.estimate``, which builds each configuration with
archplay's own classes on torch's meta device (cached) and is checked against measurement in
``tests/test_estimate18.py``; this module only validates the controls, asks it, and lays out its
numbers (``archplay.viz.scale`` draws them). A configuration is a published preset ("preset:NAME"), a
model the server offers (its catalog key: its config is enough) or a built-in before it is loaded
("builtin:NAME"); nothing a visitor types reaches the file system.

"Scale this model up" (the Architecture card, the Lab): ``ui.configure(key)`` puts a model in the first
column and presets of its family, small to large, in the others; wire it as
``button.click(ui.configure, inputs=[model], outputs=ui.configure_outputs)``.
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from types import SimpleNamespace

import gradio as gr
import plotly.graph_objects as go

from archplay.models import registry
from archplay.models.analysis import presets, upscale
from archplay.models.analysis.estimate import CUDA_RESERVE, DTYPES, GPUS, TOKENS_PER_PARAMETER, estimate
from archplay.models.checkpoints.loading import BUILTIN_NAMES
from archplay.models.training.recipe import BUILTIN_RECIPES, Recipe, builtin_recipe
from archplay.viz.scale import GIB, components_figure, count, duration, gib, memory_figure

from .catalog import Catalog
from .messages import error, md_escape, note, ok, plural, warn

SLOTS = 4
NONE = ""  # an empty column
PRESET, BUILTIN, RECIPE = "preset:", "builtin:", "recipe:"
DEFAULTS = (PRESET + "gpt2", PRESET + "llama-2-7b", PRESET + "mixtral-8x7b", NONE)
MODES = ("inference", "training")
DTYPE_CHOICES = tuple(DTYPES)  # fp32, bf16, fp16, fp8, int8, int4
OPTIMIZER_CHOICES = (("AdamW", "adamw"), ("SGD with momentum", "sgd"), ("8-bit Adam", "adamw8bit"))
ZERO_CHOICES = (("0: off", 0), ("1: optimizer state", 1), ("2: + gradients", 2), ("3: + weights (FSDP)", 3))
GPU_NAMES = tuple(g.name for g in GPUS)
# Whole-number controls: (the most allowed, what it is). The least is 1 for all of them.
LIMITS = {"batch": 1 << 16, "context": 1 << 24, "dp": 1 << 20, "tp": 1 << 10, "pp": 1 << 10}
DEFAULT_MFU = 40  # percent

HELP = (
    "What a model costs at **full size**, computed from archplay's own model code (each configuration is built "
    "on PyTorch's *meta* device: every shape, no memory) and checked against measured runs of small ones. "
    "Pick up to four configurations; the settings below apply to all of them. **Memory is per GPU**, split "
    "into its parts; the dashed lines are GPU sizes (a card also needs about 1 GiB for its CUDA context). "
    "**Training** keeps much more than the weights: gradients, the optimizer's state (AdamW: two moments, "
    "in fp32 under mixed precision, plus fp32 master weights) and the activations saved for the backward "
    "pass. **ZeRO** splits training state over the data-parallel GPUs (stage 1 the optimizer state, 2 the "
    "gradients too, 3 the weights too); **tensor parallelism** splits every layer, **pipeline parallelism** "
    "gives each GPU a slice of the layers."
)

CSS = """
#scale-table table, #scale-fits table { table-layout: auto; width: 100%; font-size: 0.92em; }
#scale-table th, #scale-table td, #scale-fits th, #scale-fits td { overflow-wrap: normal; word-break: normal; }
#scale-table td:first-child, #scale-fits td:first-child { white-space: nowrap; width: 1%; }
"""


# --------------------------------------------------------------------------- what a column can hold


def choices(catalog: Catalog, keep=()) -> list[tuple[str, str]]:
    """A column's dropdown: the presets, the models the server offers, built-ins it has not loaded, the
    built-ins' recipes, none; and any recipe value in ``keep`` (a Lab recipe scaled up: the columns'
    current values, so that a refreshed list still holds them)."""
    out = [(f"{p.title} (preset)", PRESET + p.name) for p in presets.PRESETS.values()]
    out += [(label, key) for label, key in catalog.choices()]
    out += [(f"{name} (built-in)", BUILTIN + name) for name in BUILTIN_NAMES if name not in catalog]
    out += [(f"{name} recipe (Lab)", RECIPE + name) for name in BUILTIN_RECIPES]
    known = {v for _, v in out}
    for value in keep if isinstance(keep, (list, tuple)) else ():
        if isinstance(value, str) and value.startswith(RECIPE) and value not in known:
            try:
                out.append((target(catalog, value).label, value))
            except ValueError:
                continue
            known.add(value)
    return out + [("(none)", NONE)]


# A Lab recipe sent to this tab ("scale this recipe up"), remembered by its content's hash, so that a
# column's value names it (RECIPE + "#" + hash); the most recent MAX_REMEMBERED are kept.
MAX_REMEMBERED = 256
_REMEMBERED: OrderedDict[str, Recipe] = OrderedDict()
_REMEMBER_LOCK = threading.Lock()


def remember(recipe: Recipe) -> str:
    """The column value of ``recipe`` as it is (``RECIPE`` + "#" + its hash)."""
    digest = hashlib.sha256(json.dumps(recipe.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    with _REMEMBER_LOCK:
        _REMEMBERED[digest] = recipe
        _REMEMBERED.move_to_end(digest)
        while len(_REMEMBERED) > MAX_REMEMBERED:
            _REMEMBERED.popitem(last=False)
    return f"{RECIPE}#{digest}"


def _recipe(value: str) -> tuple[Recipe, str | None] | None:
    """(the recipe, the size or None) a recipe column value names; None if it names none."""
    name, _, size = value[len(RECIPE):].partition("@")
    if name.startswith("#"):
        with _REMEMBER_LOCK:
            recipe = _REMEMBERED.get(name[1:])
    else:
        recipe = builtin_recipe(name) if name in BUILTIN_RECIPES else None
    if recipe is None or (size and size not in upscale.SHAPES):
        return None
    return recipe, size or None


@dataclass(frozen=True)
class Target:
    model: object  # what ``estimate`` takes: a preset or built-in name, or a loaded model
    label: str
    note: str = ""


def target(catalog: Catalog, value: str) -> Target:
    """A column's value as something ``estimate`` takes; ValueError for a value no dropdown offers."""
    value = value if isinstance(value, str) else ""
    if value.startswith(PRESET) and (p := presets.find(value[len(PRESET):])) is not None:
        return Target(p.name, p.title, p.note)
    if value.startswith(BUILTIN) and value[len(BUILTIN):] in BUILTIN_NAMES:
        name = value[len(BUILTIN):]
        return Target(name, f"{name} (built-in)")
    if value and value in catalog:
        entry = catalog.get(value)
        return Target(entry.model, str(getattr(entry.config, "name", None) or entry.label))
    if value.startswith(RECIPE) and (found := _recipe(value)) is not None:
        recipe, size = found
        if size is None:
            return Target(recipe, f"{recipe.title} (recipe)")
        s = upscale.shape(size)
        return Target(upscale.at_size(recipe, size), upscale.scaled_name(recipe.title, size),
                      f"{recipe.title}'s design at the {s.title} shape ({s.like}): width {s.width:,}, "
                      f"vocabulary {upscale.VOCAB:,}")  # fmt: skip
    shown = value if len(value) <= 80 else value[:79] + "…"
    raise ValueError(f"unknown configuration {shown!r}: choose a preset, a built-in or a loaded model")


# --------------------------------------------------------------------------- the controls


def _whole(name: str, value, most: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value != int(value) or not 1 <= value <= most:  # fmt: skip
        raise ValueError(f"{name} must be a whole number from 1 to {most:,}, got {value!r}")
    return int(value)


def settings(mode="inference", dtype="bf16", batch=1, context=2048, optimizer="adamw", mixed_precision=True,
             checkpointing=False, zero=0, dp=1, tp=1, pp=1, gpu=GPU_NAMES[0], mfu=DEFAULT_MFU) -> dict:  # fmt: skip
    """The controls checked and turned into ``estimate``'s keywords (plus "gpu" and "mfu", a fraction);
    ValueError with a message for the page otherwise."""
    if mode not in MODES:
        raise ValueError(f"mode must be inference or training, got {mode!r}")
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {dtype!r}")
    train = mode == "training"
    if train and dtype not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"training keeps its weights in fp32, bf16 or fp16, not {dtype}: quantized weights "
                         "(fp8, int8, int4) are for inference")  # fmt: skip
    if optimizer not in {v for _, v in OPTIMIZER_CHOICES}:
        raise ValueError(f"optimizer must be one of {', '.join(v for _, v in OPTIMIZER_CHOICES)}, got {optimizer!r}")
    for name, value in (("mixed precision", mixed_precision), ("activation checkpointing", checkpointing)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
    if isinstance(zero, bool) or zero not in (0, 1, 2, 3):
        raise ValueError(f"the ZeRO stage must be 0, 1, 2 or 3, got {zero!r}")
    whole = {k: _whole(k, v, LIMITS[k]) for k, v in (("batch", batch), ("context", context), ("dp", dp),
                                                      ("tp", tp), ("pp", pp))}  # fmt: skip
    if gpu not in GPU_NAMES:
        raise ValueError(f"the GPU must be one of {', '.join(GPU_NAMES)}, got {gpu!r}")
    if isinstance(mfu, bool) or not isinstance(mfu, (int, float)) or not 0 < mfu <= 100:
        raise ValueError(f"MFU must be a percentage above 0 and at most 100, got {mfu!r}")
    return dict(dtype=dtype, train=train, optimizer=optimizer, mixed_precision=mixed_precision,
                checkpointing=checkpointing, zero=int(zero), **whole, gpu=gpu, mfu=mfu / 100)  # fmt: skip


# --------------------------------------------------------------------------- the view


@dataclass
class View:
    status: str = ""
    memory: go.Figure | None = None
    components: go.Figure | None = None
    table: str = ""
    fits: str = ""
    notes: str = ""
    results: list = field(default_factory=list)  # (label, estimate) of each column shown


def scale_view(catalog: Catalog, models, **controls) -> View:
    """The tab for the columns ``models`` (dropdown values; ``NONE`` skips a column) and the controls
    (``settings``' keywords). A column whose configuration cannot take these settings (tp must divide
    its heads) shows its reason; a bad control gives one message and nothing drawn."""
    try:
        kw = settings(**controls)
    except (TypeError, ValueError) as e:
        return View(status=error(md_escape(str(e))))
    if not isinstance(models, (list, tuple)) or len(models) > SLOTS:
        return View(status=error(f"give up to {SLOTS} configurations"))
    gpu, mfu = kw.pop("gpu"), kw.pop("mfu")
    results, problems = [], []
    for i, value in enumerate(models):
        if value in (None, NONE):
            continue
        try:
            t = target(catalog, value)
            r = estimate(t.model, **kw)
        except (ValueError, TypeError, KeyError, RuntimeError, NotImplementedError) as e:  # a message, never a 500
            label = target_label(catalog, value) or f"column {i + 1}"
            problems.append(f"{md_escape(label)}: {md_escape(str(e))}")
            continue
        results.append((t, r))
    if not results:
        status = error("; ".join(problems)) if problems else note("Choose a configuration in one of the columns.")
        return View(status=status)
    view = View(results=[(t.label, r) for t, r in results])
    labels = [t.label for t, _ in results]
    view.memory = memory_figure(labels, [r["memory"] for _, r in results], [(g.name, g.memory_bytes) for g in GPUS],
                                title=_memory_title(kw))  # fmt: skip
    view.components = components_figure(labels, [r["params_by_component"] for _, r in results],
                                         [r["params"] for _, r in results], [r["active_params"] for _, r in results])
    view.table = table(results, kw, gpu, mfu)
    view.fits = fits_table(results)
    view.notes = notes_md(results, kw)
    done = ok(f"{plural(len(results), 'configuration')}: {_summary(kw)}.")
    view.status = done if not problems else done + "\n\n" + warn("Not shown: " + "; ".join(problems))
    return view


def target_label(catalog: Catalog, value) -> str | None:
    try:
        return target(catalog, value).label
    except ValueError:
        return None


def _gpus(kw: dict) -> int:
    return kw["dp"] * kw["tp"] * kw["pp"]


def _summary(kw: dict) -> str:
    what = "training" if kw["train"] else "inference"
    layout = [f"{kw['dp']}-way data", f"{kw['tp']}-way tensor", f"{kw['pp']}-way pipeline"]
    parallel = ", ".join(p for p, n in zip(layout, (kw["dp"], kw["tp"], kw["pp"])) if n > 1)
    gpus = plural(_gpus(kw), "GPU") + (f" ({parallel} parallel)" if parallel else "")
    text = f"{what} in {kw['dtype']}, batch {kw['batch']:,} × {kw['context']:,} tokens, on {gpus}"
    if kw["train"]:
        text += f", {dict((v, k) for k, v in OPTIMIZER_CHOICES)[kw['optimizer']]}"
        text += ", mixed precision" if kw["mixed_precision"] and kw["dtype"] != "fp32" else ""
        text += ", activation checkpointing" if kw["checkpointing"] else ""
    if kw["zero"]:
        text += f", ZeRO stage {kw['zero']}"
    return text


def _memory_title(kw: dict) -> str:
    """The memory figure's title, the settings on a smaller second line (plotly never wraps a title)."""
    return f"Memory per GPU<br><sup>{html.escape(_summary(kw))}</sup>"


def flops(x: float) -> str:
    for size, unit in ((1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP"), (1e3, "kFLOP")):
        if x >= size:
            return f"{x / size:.3g} {unit}"
    return f"{x:.3g} FLOP"


def small_bytes(n: float) -> str:
    for size, unit in ((GIB, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:g} bytes"


def smallest_fit(r: dict) -> str:
    """The smallest of the GPUs the configuration fits on (per GPU), or how far it is from the largest."""
    fitting = sorted((f for f in r["fits"] if f["fits"]), key=lambda f: f["memory_bytes"])
    if fitting:
        return fitting[0]["gpu"]
    largest = max(r["fits"], key=lambda f: f["memory_bytes"])
    return f"none ({largest['share']:.1f}× a {largest['gpu']})"


def table(results, kw: dict, gpu: str, mfu: float) -> str:
    """The numbers, one column per configuration."""
    gpus = _gpus(kw)
    head = "| | " + " | ".join(md_escape(t.label) for t, _ in results) + " |"
    rows = [head, "|---|" + "---:|" * len(results)]

    def row(name: str, cells) -> None:
        rows.append(f"| {name} | " + " | ".join(md_escape(c) for c in cells) + " |")

    rs = [r for _, r in results]
    row("family · from", [f"{r['family']} · {r['source']}" for r in rs])
    row("parameters", [f"{count(r['params'])} ({r['params']:,})" for r in rs])
    row("active per token", [f"{count(r['active_params'])} ({r['active_params'] / r['params']:.0%})" for r in rs])
    row(f"forward FLOPs / token (at {kw['context']:,})", [flops(r["flops_per_token"]) for r in rs])
    row("training FLOPs / token (3×)", [flops(r["training_flops_per_token"]) for r in rs])
    row("KV cache / token", [_kv_per_token(r) for r in rs])
    row(f"KV cache, {kw['batch']:,} × {kw['context']:,} tokens", [_kv_at(r) for r in rs])
    for key, name in (("weights", "weights"), ("gradients", "gradients"), ("optimizer", "optimizer state"),
                      ("activations", "activations"), ("kv_cache", "KV cache / state")):  # fmt: skip
        if key == "weights" or any(r["memory"][key] for r in rs):  # inference has no training state, training no cache
            row(f"memory per GPU: {name}", [gib(r["memory"][key]) for r in rs])
    rows.append("| **memory per GPU: total** | " + " | ".join(f"**{gib(r['memory']['total'])}**" for r in rs) + " |")
    row("smallest GPU it fits", [smallest_fit(r) for r in rs])
    row(f"Chinchilla-optimal tokens ({TOKENS_PER_PARAMETER} / parameter)", [count(r["chinchilla"]["tokens"]) for r in rs])
    row(f"training on them: {gpus:,} × {gpu} at {mfu:.0%} MFU",
        [duration(r.train_time_s(r["chinchilla"]["tokens"], mfu, gpu, gpus)) for r in rs])  # fmt: skip
    row("Chinchilla's predicted loss", [f"{r['chinchilla']['loss']:.3f} nats/token" for r in rs])
    return "\n".join(rows)


def _kv_per_token(r: dict) -> str:
    if "state_bytes" in r:
        return f"none: a fixed state of {small_bytes(r['state_bytes'])} per sequence"
    if not r["kv_cache_bytes_per_token"]:
        return "none (it does not generate)"
    return small_bytes(r["kv_cache_bytes_per_token"])


def _kv_at(r: dict) -> str:
    return small_bytes(r["kv_cache_bytes"]) if r["kv_cache_bytes"] else "none"


def fits_table(results) -> str:
    """Which GPUs each configuration fits on (its total per GPU within the card less ~1 GiB for CUDA)."""
    head = "| GPU | memory | " + " | ".join(md_escape(t.label) for t, _ in results) + " |"
    rows = [head, "|---|---:|" + ":---:|" * len(results)]
    for i, g in enumerate(GPUS):
        cells = []
        for _, r in results:
            f = r["fits"][i]
            share = f"{f['share']:,.0%}" if f["share"] >= 0.005 else "&lt;1%"
            cells.append(f"{'✓' if f['fits'] else '✕'} {share}")
        rows.append(f"| {md_escape(g.name)} | {gib(g.memory_bytes)} | " + " | ".join(cells) + " |")
    reserve = gib(CUDA_RESERVE)
    return ("**Fits on one GPU?** The share is the total per GPU over the card's memory; ✓ leaves "
            f"{reserve} for the CUDA context and the allocator.\n\n" + "\n".join(rows))


def notes_md(results, kw: dict) -> str:
    lines = []
    if kw["zero"] and kw["dp"] == 1:
        lines.append(note("ZeRO splits state over the data-parallel GPUs: with 1 of them it changes nothing."))
    if not kw["train"] and kw["zero"] in (1, 2):
        lines.append(note("ZeRO stages 1 and 2 split the gradients and optimizer state: inference has neither."))
    for t, r in results:
        said = [t.note] if t.note else []
        said += r["notes"]
        for s in said:
            lines.append(f"- **{md_escape(t.label)}**: {md_escape(s)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the claims, computed


@functools.lru_cache(maxsize=1)
def claims() -> str:
    """The issue's two example claims, checked by ``estimate`` (not typed in)."""
    mix = estimate("mixtral-8x7b")
    train = estimate("llama-2-7b", train=True)
    infer = estimate("llama-2-7b")
    P = train["params"]
    m = train["memory"]
    h100 = next(f for f in train["fits"] if f["gpu"].startswith("H100"))
    laptop = next(f for f in infer["fits"] if f["gpu"].startswith("laptop"))
    states = (m["weights"] + m["gradients"] + m["optimizer"]) / P
    cfg = presets.preset("mixtral-8x7b")
    return (
        f"**Checking two claims.** Mixtral 8x7B has **{count(mix['params'])}** parameters, of which "
        f"**{count(mix['active_params'])}** run per token ({cfg.top_k} of its {cfg.n_experts} experts per layer), "
        f"not 187 B. Llama 2 7B ({count(P)} parameters) needs **{gib(m['total'])}** on one GPU to train in bf16 "
        f"with AdamW ({states:g} bytes per parameter of weights, gradients, fp32 master weights and moments, plus "
        f"{gib(m['activations'])} of activations for one sequence of {train['settings']['context']:,} tokens): "
        f"{'more' if not h100['fits'] else 'less'} than an 80 GB H100 holds; "
        f"for inference in bf16 it needs **{gib(infer['memory']['total'])}**, which "
        f"{'fits in' if laptop['fits'] else 'does not fit in'} a 16 GB laptop GPU."
    )


# --------------------------------------------------------------------------- layout and wiring


def scale_up(catalog: Catalog, key: str) -> list[str]:
    """The columns for "scale this model up": ``key`` (a catalog key, a preset name or a column value),
    then up to three presets of the same family larger than it (its smallest, middle and largest; the
    family's largest if none is larger). ValueError if unknown."""
    if key in catalog or str(key).startswith((PRESET, BUILTIN)):
        first = key
    elif isinstance(key, str) and presets.find(key) is not None:
        first = PRESET + presets.find(key).name
    else:
        raise ValueError(f"unknown model {str(key)[:80]!r}")
    r = estimate(target(catalog, first).model)
    kin = registry.get(r["family"])  # the presets of the same registry entry
    same = sorted((p for p in presets.PRESETS.values() if registry.of(p.make()) is kin and PRESET + p.name != first),
                  key=lambda p: p.params)  # fmt: skip
    larger = [p for p in same if p.params > r["params"]] or same[-(SLOTS - 1):]  # the largest, if none is larger
    picked = [larger[i] for i in sorted({0, len(larger) // 2, len(larger) - 1})] if larger else []
    columns = [first] + [PRESET + p.name for p in picked[: SLOTS - 1]]
    return columns + [NONE] * (SLOTS - len(columns))


RECIPE_SIZES = ("1.3b", "7b")  # "scale this recipe up": the recipe, its design at these shapes, a preset


def recipe_columns(catalog: Catalog, text) -> list[str]:
    """The columns for "scale this recipe up" from the Lab: the recipe (its JSON text, as the Lab shows
    it) as it is, its design at the ``RECIPE_SIZES`` shapes, and the published preset of its family
    nearest in size to the largest. ValueError with the recipe's problem."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the Lab shows no recipe yet: fix the recipe's settings first")
    if len(text) > 100_000:
        raise ValueError("a recipe is a small JSON object")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"the recipe could not be read as JSON: {e}") from None
    value = remember(Recipe.from_dict(data))
    columns = [value] + [f"{value}@{size}" for size in RECIPE_SIZES]
    largest = estimate(target(catalog, columns[-1]).model)
    kin = registry.get(largest["family"])
    same = [p for p in presets.PRESETS.values() if registry.of(p.make()) is kin]
    if same:
        nearest = min(same, key=lambda p: abs(math.log(p.params / largest["params"])))
        columns.append(PRESET + nearest.name)
    return columns + [NONE] * (SLOTS - len(columns))


def build(catalog: Catalog, demo: gr.Blocks | None = None) -> SimpleNamespace:
    """The tab's layout and events, inside the caller's ``gr.Tab``; ``demo`` (default: the Blocks being
    built) computes the first view when a page opens."""
    demo = demo or gr.context.Context.root_block
    ui = SimpleNamespace()
    gr.Markdown("### Scale: what a model costs at full size")
    gr.Markdown(HELP, elem_classes="ap-help")
    ui.claims = gr.Markdown("", elem_id="scale-claims")
    offered = choices(catalog)
    with gr.Row(equal_height=False):
        ui.models = [gr.Dropdown(offered, value=DEFAULTS[i], label=f"Configuration {i + 1}", min_width=200,
                                 elem_id=f"scale-model-{i}") for i in range(SLOTS)]  # fmt: skip
    with gr.Row(equal_height=False):
        ui.mode = gr.Radio(list(MODES), value="inference", label="Mode", elem_id="scale-mode", min_width=160)
        ui.dtype = gr.Radio(list(DTYPE_CHOICES), value="bf16", label="Weights dtype", elem_id="scale-dtype",
                            min_width=300)  # fmt: skip
        ui.batch = gr.Number(1, precision=0, label="Batch (sequences per GPU)", elem_id="scale-batch", min_width=120)
        ui.context = gr.Number(2048, precision=0, label="Context (tokens)", elem_id="scale-context", min_width=120)
    with gr.Row(equal_height=False):
        ui.optimizer = gr.Dropdown(list(OPTIMIZER_CHOICES), value="adamw", label="Optimizer (training)",
                                   elem_id="scale-optimizer", min_width=160)  # fmt: skip
        ui.mixed = gr.Checkbox(True, label="Mixed precision (training)", elem_id="scale-mixed", min_width=160)
        ui.checkpointing = gr.Checkbox(False, label="Activation checkpointing (training)",
                                       elem_id="scale-checkpointing", min_width=160)  # fmt: skip
        ui.zero = gr.Dropdown(list(ZERO_CHOICES), value=0, label="ZeRO stage", elem_id="scale-zero", min_width=160)
    with gr.Row(equal_height=False):
        ui.dp = gr.Number(1, precision=0, label="Data-parallel GPUs", elem_id="scale-dp", min_width=110)
        ui.tp = gr.Number(1, precision=0, label="Tensor-parallel", elem_id="scale-tp", min_width=110)
        ui.pp = gr.Number(1, precision=0, label="Pipeline-parallel", elem_id="scale-pp", min_width=110)
        ui.gpu = gr.Dropdown(list(GPU_NAMES), value=GPU_NAMES[0], label="GPU (training time)", elem_id="scale-gpu",
                             min_width=150)  # fmt: skip
        ui.mfu = gr.Slider(1, 100, value=DEFAULT_MFU, step=1, label="MFU %", elem_id="scale-mfu",
                           min_width=150)  # fmt: skip
    ui.status = gr.Markdown("", elem_id="scale-status")
    ui.memory = gr.Plot(show_label=False, elem_id="scale-memory")
    ui.components = gr.Plot(show_label=False, elem_id="scale-components")
    ui.table = gr.Markdown("", elem_id="scale-table")
    ui.fits = gr.Markdown("", elem_id="scale-fits")
    ui.notes = gr.Markdown("", elem_id="scale-notes", elem_classes="ap-help")

    controls = [ui.mode, ui.dtype, ui.batch, ui.context, ui.optimizer, ui.mixed, ui.checkpointing, ui.zero, ui.dp,
                ui.tp, ui.pp, ui.gpu, ui.mfu]  # fmt: skip
    outputs = [ui.status, ui.memory, ui.components, ui.table, ui.fits, ui.notes]

    def on_change(*values):
        models, rest = list(values[:SLOTS]), values[SLOTS:]
        names = ("mode", "dtype", "batch", "context", "optimizer", "mixed_precision", "checkpointing", "zero",
                 "dp", "tp", "pp", "gpu", "mfu")  # fmt: skip
        v = scale_view(catalog, models, **dict(zip(names, rest)))
        return {ui.status: v.status, ui.memory: v.memory, ui.components: v.components, ui.table: v.table,
                ui.fits: v.fits, ui.notes: v.notes}  # fmt: skip

    triggers = [c.change for c in [*ui.models, *controls]]
    if demo is not None:
        triggers.insert(0, demo.load)
        demo.load(claims, outputs=[ui.claims], api_name=False, show_progress="hidden")
    gr.on(triggers=triggers, fn=on_change, inputs=[*ui.models, *controls], outputs=outputs, api_name="scale",
          trigger_mode="always_last", show_progress="minimal")  # fmt: skip

    def filled(make, what):
        """Updates for ``configure_outputs``: the columns ``make(what)`` gives, or a message."""
        try:
            columns = make(catalog, what)
        except ValueError as e:
            return [gr.update() for _ in ui.models] + [error(md_escape(str(e)))]
        now = choices(catalog, keep=columns)  # the catalog may have grown since the page was built
        return [gr.update(choices=now, value=c) for c in columns] + [gr.update()]

    def refresh(*values):
        """The columns' choices as the catalog has them now (a checkpoint loaded since the page was built),
        keeping the recipes the columns show."""
        now = choices(catalog, keep=list(values))
        return [gr.update(choices=now) for _ in ui.models]

    ui.configure = lambda key: filled(scale_up, key)
    ui.configure_recipe = lambda text: filled(recipe_columns, text)
    ui.configure_outputs, ui.refresh = [*ui.models, ui.status], refresh
    return ui


__all__ = ["CSS", "DEFAULTS", "SLOTS", "View", "build", "choices", "claims", "recipe_columns", "remember", "scale_up",
           "scale_view", "settings", "target"]  # fmt: skip
