"""The Lab tab: design a model from a recipe, train it in the background, see what the choice changed.

A recipe (``archplay.models.training.recipe``) is the model's choices (family, size, positions,
norm and its place, activation, attention pattern, experts, scan) and its schedule. The page
shows the parameter count and the cost per token as the options change; **Train** starts
``archplay-train`` as a separate process (``archplay.models.training.jobs``), so Explore and every
slider keep working for everyone while it trains. A timer polls the run once a second: the loss
curve against the story world's entropy floor and the built-in's own curve, tokens per second,
time left, a progress bar, Stop. When the run ends its evaluation on the world's truth is shown and
the model joins every model list (Explore, Compare, Logit lens, Architecture).

The server holds the runs (``Lab``: a folder, the jobs by id, how many may run at once); a
session holds only its run's id, in ``gr.State``.
"""

from __future__ import annotations

import html
import json
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from archplay.models import LoadError, registry
from archplay.models.story import variant
from archplay.models.training import experiments, jobs
from archplay.models.training import recipe as recipes
from archplay.viz.lab import experiment_curves, final_losses, gap_bars, loss_curves, scaling_chart

from .catalog import Catalog
from .messages import error, md_escape, warn

HELP = (
    "Every language model is a set of **choices**: which family, how positions enter, which norm and "
    "where, which activation, full or local attention, experts, a scan. Start from a built-in's recipe "
    "or a blank one, change one choice, and **Train** it on the story world. The curve is the training "
    "loss; the dashed line is the world's **entropy floor**, the loss of a model that knows the story "
    "grammar exactly (no model can go below it). When the run ends, the model is evaluated on the "
    "world's truth and joins every model list, so Explore, Compare and the Logit lens show what it learned."
)


def family_title(family: str) -> str:
    """The registry's title of a family (e.g. "decoder-only transformer")."""
    return registry.get(family).title


# (key, label, kind, info). Kinds: "int", "float", "bool", or a tuple of choices.
OPTIONS = (
    ("layers", "Layers", "int", "blocks in the stack"),
    ("width", "Width", "int", "d_model: each token's vector"),
    ("heads", "Heads", "int", "attention heads per layer"),
    ("kv_heads", "Key/value heads", "int", "fewer than heads: grouped-query; 1: multi-query"),
    ("positions", "Positions", recipes.POSITIONS, "how a token's place enters the model"),
    ("norm", "Norm", recipes.NORMS, "LayerNorm or RMSNorm"),
    ("norm_position", "Norm placement", recipes.NORM_POSITIONS, "pre: before each sublayer; post: after the residual add"),
    ("activation", "Activation", recipes.ACTIVATIONS, "of the feed-forward layer (swiglu, geglu: gated)"),
    ("bias", "Biases", "bool", "in projections and feed-forward (GPT-2 has them, Llama not)"),
    ("attention", "Attention", recipes.ATTENTION, "which keys a query may see"),
    ("window", "Window", "int", "tokens a query sees under a local pattern, itself included"),
    ("experts", "Experts", "int", "feed-forward experts per layer"),
    ("top_k", "Experts per token", "int", "top-k: the experts each token runs"),
    ("shared_expert", "Shared expert", "bool", "an always-on expert beside the routed ones"),  # fmt: skip
    ("load_balancing", "Load-balancing weight", "float", "of the auxiliary loss that keeps every expert used"),
    ("d_state", "State size", "int", "N: the scan's state per channel"),
    ("expand", "Expand", "int", "the scan's inner width, times the model width"),
    ("context", "Context", "int", "tokens per training sequence"),
    ("max_len", "Longest text", "int", "tokens the model reads at most (empty: the context)"),
    ("steps", "Steps", "int", "optimizer steps"),
    ("batch", "Batch", "int", "sequences per step"),
    ("lr", "Learning rate", "float", "peak, after warm-up; cosine decay"),
    ("seed", "Seed", "int", "initial weights and batches"),
)
KEYS = tuple(o[0] for o in OPTIONS)
STARTS = tuple((f"built-in {n}", n) for n in recipes.BUILTIN_RECIPES) + tuple(
    (f"blank {family_title(f)}", f"blank:{f}") for f in recipes.families())
POLL_SECONDS = 1.0
EVALUATE_STORIES = 100  # test stories a finished run is evaluated on (a few seconds)


def applies(family: str, attention: str | None = None) -> set[str]:
    """The options a family's recipes have (its blank recipe's keys, and the window of a local pattern:
    with ``attention`` given, only when it is not "full")."""
    keys = set(recipes.blank_recipe(family).to_dict()) | {"max_len"}
    if "attention" in keys and attention != "full":
        keys.add("window")
    return keys & set(KEYS)


# --------------------------------------------------------------------------- the server's runs


@dataclass
class Run:
    job: jobs.Job
    recipe: recipes.Recipe
    key: str | None = None  # the catalog key once it joined the model lists
    evaluation: dict | None = None
    fine_tune: dict | None = None  # held-out perplexity and continuations before and after (fine-tuning)
    tuning: bool = False  # trained on a visitor's text, not the story world
    note: str = ""


class Lab:
    """The server's training runs: where they write, which are running, how many may run at once."""

    def __init__(self, catalog: Catalog, root: str | Path | None = None, *, max_running: int = 1, threads: int = 1,
                 stories: int | None = None):  # fmt: skip
        self.catalog = catalog
        self.stories = stories  # a smaller world to train on (tests); None: all of it
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="archplay-lab-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.root = self.root.resolve()
        self.max_running = max_running
        self.threads = threads
        self._runs: dict[str, Run] = {}
        self._lock = threading.Lock()

    def start(self, recipe: recipes.Recipe, *, from_: str | None = None, text: str | None = None) -> str:
        """Start training ``recipe`` (fine-tuning ``from_`` on ``text`` when given); its id. ValueError
        when the server already trains its share."""
        if self.max_running < 1:
            raise ValueError("training is turned off on this server (it was started with --lab-jobs 0)")
        with self._lock:
            busy = sum(r.job.state == "running" for r in self._runs.values())
            if busy >= self.max_running:
                raise ValueError(f"this server already trains {busy} model{'s' * (busy != 1)} (at most "
                                 f"{self.max_running} at once, so the page stays quick): try again when it ends")  # fmt: skip
            run_id = uuid.uuid4().hex[:10]
            name = recipe.name or f"lab-{recipe.family}"
            out = self.root / f"{_slug(name)}-{run_id}"
            recipe = recipe.replace(name=f"{_slug(name)}-{run_id[:4]}")
            if text is None:
                job = jobs.start(recipe, out, threads=self.threads, evaluate=EVALUATE_STORIES, stories=self.stories)
            else:
                job = jobs.start(recipe, out, threads=self.threads, from_=from_, text=text)
            self._runs[run_id] = Run(job=job, recipe=recipe, tuning=text is not None)
            return run_id

    def get(self, run_id: str | None) -> Run | None:
        with self._lock:
            return self._runs.get(run_id or "")

    def stop(self, run_id: str | None) -> None:
        run = self.get(run_id)
        if run is not None:
            run.job.stop()

    def stop_all(self) -> None:
        """Stop every run still training (the server is going)."""
        with self._lock:
            running = [r for r in self._runs.values() if r.job.state == "running"]
        for r in running:
            r.job.stop()

    def finish(self, run: Run) -> None:
        """Once a run is done: its evaluation (from its training record) and its place in the model lists."""
        if run.key is not None or run.note:
            return
        out = run.job.out
        try:
            record = json.loads((out / "training.json").read_text(encoding="utf-8"))
            run.evaluation = record.get("evaluation")
            run.fine_tune = record.get("fine_tune")
            entry = self.catalog.add(str(out), root=self.root)
            run.key = entry.key
        except (OSError, ValueError, LoadError) as e:
            run.note = f"the run ended but its model could not be opened: {e}"


def _slug(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_" else "-" for c in str(name))[:40].strip("-")
    return keep or "lab"


# --------------------------------------------------------------------------- pure handlers


def recipe_from(family: str, values: dict) -> recipes.Recipe:
    """The recipe the page shows: the family's options from ``values`` (the others left out)."""
    keep = applies(family)
    d = {"family": family}
    for key, value in values.items():
        if key not in keep or value is None or value == "":
            continue
        if key == "window" and values.get("attention") == "full":
            continue
        d[key] = _number(key, value)
    return recipes.Recipe.from_dict(d)


def _number(key: str, value):
    kind = next(o[2] for o in OPTIONS if o[0] == key)
    if kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def summary(family: str, values: dict) -> tuple[str, str]:
    """(the recipe's size and cost as markdown, the recipe as JSON) or (a message, "")."""
    try:
        r = recipe_from(family, values)
        counts = recipes.parameter_count(r)
        flops = recipes.flops_per_token(r)
    except ValueError as e:
        return error(md_escape(str(e))), ""
    total, active = counts["total"], counts["active"]
    tokens = r.steps * r.batch * r.context
    parts = [f"**{total:,} parameters**" + (f", {active:,} active per token" if active != total else "")
             + f" ({counts['embedding']:,} of them embeddings)",
             f"**{_si(flops['forward'])}FLOPs per token** forward (attention's share at {flops['context']} tokens: "
             f"{_si(flops['attention'])}FLOPs), {_si(flops['train'])}FLOPs to train on one",
             f"{r.steps:,} steps × {r.batch} × {r.context} tokens = {tokens:,} training tokens, "
             f"{_si(flops['train'] * tokens)}FLOPs in all"]  # fmt: skip
    return "\n\n".join(parts), json.dumps(r.to_dict(), indent=2)


def _si(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g} "


def values_of(r: recipes.Recipe) -> dict:
    d = r.to_dict()
    return {k: d.get(k) for k in KEYS}


def start_values(start: str) -> tuple[str, dict]:
    """(family, option values) of a "start from" choice: a built-in's recipe or a blank one."""
    if start.startswith("blank:"):
        r = recipes.blank_recipe(start.removeprefix("blank:"))
    else:
        r = recipes.builtin_recipe(start)
        r = r.replace(name=None, steps=min(r.steps, 600))  # a start, not a 10-minute run
    return r.family, values_of(r)


def progress_html(state: dict | None) -> str:
    """A progress bar with the step, the loss, tokens per second and the time left."""
    if not state:
        return ""
    step, steps = int(state.get("step") or 0), max(1, int(state.get("steps") or 1))
    share = min(1.0, step / steps)
    bits = [f"step {step:,} of {steps:,}"]
    if state.get("losses"):
        bits.append(f"loss {state['losses'][-1]:.3f}")
    if state.get("tokens_per_s"):
        bits.append(f"{state['tokens_per_s']:,.0f} tokens/s")
    if state.get("state") == "running" and step >= steps:
        bits.append("evaluating on the world's truth…")
    elif state.get("state") == "running" and state.get("eta_s") is not None:
        bits.append(f"about {_duration(state['eta_s'])} left")
    elif state.get("elapsed_s"):
        bits.append(f"{_duration(state['elapsed_s'])}")
    word = {"running": "Training", "done": "Done", "stopped": "Stopped", "failed": "Failed"}.get(state.get("state"), "")
    return (f'<div class="ap-progress" role="progressbar" aria-valuenow="{step}" aria-valuemin="0" '
            f'aria-valuemax="{steps}"><div class="ap-progress-bar" style="width:{100 * share:.1f}%"></div></div>'
            f'<div class="ap-progress-text"><b>{html.escape(word)}</b> · {html.escape(" · ".join(bits))}</div>')  # fmt: skip


def _duration(seconds: float) -> str:
    s = int(round(float(seconds)))
    return f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"


def evaluation_md(ev: dict | None, name: str) -> str:
    """The run's evaluation as the evaluate module's table (the world's truth beside the model)."""
    if not ev:
        return ""
    from archplay.models.training.evaluate import table

    return f"#### How {md_escape(name)} does on the world's truth\n\n" + table({md_escape(name): ev})


TUNABLE = ("gpt", "moe", "mamba")  # the built-ins that continue text: a text of one's own can teach them
TUNE_STEPS, TUNE_LR = 100, 1e-3


def finetune_recipe(name: str, steps, lr) -> recipes.Recipe:
    """The built-in's own recipe with a fine-tuning schedule (ValueError for anything off)."""
    if name not in TUNABLE:
        raise ValueError(f"choose one of {', '.join(TUNABLE)} to fine-tune (the models that continue text)")
    steps = _number("steps", steps)
    return recipes.builtin_recipe(name).replace(steps=steps, lr=lr, warmup=max(1, int(steps or 1) // 10),
                                                name=f"{name}-tuned")  # fmt: skip


def variant_note() -> str:
    """What the variant text changes, for the line under the text box."""
    return (f"{variant.STORIES} stories of the world's grammar, drawn apart from the training stories, with "
            f"{md_escape(variant.describe())}. The built-in has never seen these words: watch the held-out "
            "perplexity and whether the continuation uses the new names.")


def finetune_md(ft: dict | None, name: str) -> str:
    """Perplexity on the held-out text and the continuation of its opening, before and after, side by side."""
    if not ft or not ft.get("before") or not ft.get("after"):
        return ""
    b, a = ft["before"], ft["after"]

    def cell(text) -> str:
        return md_escape(" ".join(str(text).split()))

    rows = [f"#### {md_escape(name)}: your text, before and after", "",
            f"Trained on {ft['train_tokens']:,} tokens of it; measured on the {ft['held_out_tokens']:,} held out "
            "(its last part).", "", "| | before | after |", "|---|---|---|",
            f"| perplexity on the held-out text | {b['perplexity']:,.1f} | {a['perplexity']:,.1f} |",
            f"| continuing “{cell(a['prompt'])}” (greedy) | {cell(b['continuation'])} | {cell(a['continuation'])} |"]
    return "\n".join(rows)


def reference_curve(family: str) -> dict | None:
    """The built-in of the family's training curve (its train loss per step)."""
    from archplay.models.checkpoints.loading import BUILTIN_DIR

    first_of = {recipes.builtin_recipe(n).family: n for n in reversed(recipes.BUILTIN_RECIPES)}  # the family's built-in
    name = first_of.get(family)
    try:
        record = json.loads((BUILTIN_DIR / name / "training.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return None
    return {"name": f"built-in {name}", "losses": record.get("curve", {}).get("train_loss", [])}


def entropy_floor() -> float | None:
    """The story world's entropy floor (nats per token) from the built-ins' evaluation."""
    from archplay.models.checkpoints.loading import BUILTIN_DIR

    try:
        report = json.loads((BUILTIN_DIR / "evaluation.json").read_text(encoding="utf-8"))
        return float(report["gpt"]["lm"]["entropy_floor"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def curve_figure(family: str, state: dict | None, name: str, world: bool = True):
    runs = [{"name": name, "losses": state.get("losses") or [], "validation": state.get("validation") or []}] if state else []
    causal = registry.get(family).objective == "causal"
    floor = entropy_floor() if world and causal else None  # the story world's, for models that continue text
    note = "dashed: the entropy floor · dotted: the built-in's own curve" if floor else "dotted: the built-in's own curve"
    steps = int(state["steps"]) if state and state.get("steps") else None
    return loss_curves(runs, floor=floor, reference=reference_curve(family), title="Training loss", note=note,
                       x_max=steps)  # fmt: skip


# --------------------------------------------------------------------------- experiments (precomputed)


def experiment_choices() -> list[tuple[str, str]]:
    """(title, key) of every one-click experiment, for the dropdown."""
    return [(e.title, e.key) for e in experiments.EXPERIMENTS.values()]


_EXPERIMENT_CACHE: dict[str, tuple[float, dict | None, str]] = {}
_EXPERIMENT_LOCK = threading.Lock()


def experiment_result(key: str) -> tuple[dict | None, str]:
    """(the shipped result, "") or (None, why not): read once per file version, then from memory."""
    path = experiments.RESULT_DIR / f"{key}.json"
    try:
        stamp = path.stat().st_mtime if path.is_file() else -1.0
    except OSError:
        stamp = -1.0
    with _EXPERIMENT_LOCK:
        hit = _EXPERIMENT_CACHE.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1], hit[2]
    try:
        result = experiments.load_result(key)
        why = "" if result is not None else "not precomputed yet: run the command below to make it"
    except ValueError as e:
        result, why = None, f"its shipped result could not be read ({e})"
    with _EXPERIMENT_LOCK:
        _EXPERIMENT_CACHE[key] = (stamp, result, why)
    return result, why


def _curve_runs(result: dict) -> list[dict]:
    """The variants as ``loss_curves`` runs (a thinned curve stretched back to one point per step)."""
    runs = []
    for v in result["variants"]:
        k = max(1, int(v.get("loss_stride", 1)))
        losses = [x for x in v["losses"] for _ in range(k)]
        lm = (v.get("evaluation") or {}).get("lm") or {}
        runs.append({"name": v["name"], "losses": losses, "validation": v.get("validation") or [],
                     "cross_entropy": lm.get("cross_entropy")})  # fmt: skip
    return runs


def experiment_table(result: dict) -> str:
    """One row per variant: size and cost, where it ended, and its evaluation on the world's truth."""
    floor = result.get("entropy_floor")
    routed = any("routing" in (v.get("evaluation") or {}) for v in result["variants"])
    head = ["run", "parameters (active)", "training FLOPs", "train loss", "held-out loss", "gap to floor",
            "coreference head", "tokens/s"] + (["expert load (min)", "I(expert; POS)"] if routed else [])  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in result["variants"]:
        ev = v.get("evaluation") or {}
        lm, co, ro = ev.get("lm") or {}, ev.get("coreference"), ev.get("routing")
        p = v["params"]
        size = f"{p['total']:,}" + (f" ({p['active']:,})" if p["active"] != p["total"] else "")
        tail = float(smooth_last(v["losses"]))
        row = [f"**{md_escape(v['name'])}**", size, f"{_si(v['train_flops'])}FLOPs", f"{tail:.3f}",
               f"{lm['cross_entropy']:.3f}" if lm else "–", f"{lm['gap']:+.3f}" if lm else "–",
               f"L{co['layer']} H{co['head']}: {co['rate']:.0%}" if co else "–", f"{v['tokens_per_s']:,.0f}"]  # fmt: skip
        if routed:
            row += [f"{ro['min_load']:.0%}" if ro else "–",
                    " / ".join(f"{x:.2f}" for x in ro["mi_pos_bits"]) + " bits" if ro else "–"]  # fmt: skip
        lines.append("| " + " | ".join(row) + " |")
    note = (f"Held-out loss: cross-entropy on 100 test stories the runs never saw; the world's entropy floor "
            f"there is **{floor:.3f}** nats per token. " if floor is not None else "")
    note += "Coreference head: how often the best head's strongest attention from a pronoun lands on its antecedent."
    settings = result.get("settings") or {}
    if settings.get("parallel", 1) > 1:
        note += (f" Tokens per second: {settings['parallel']} runs trained at once, "
                 f"{settings.get('threads', 1)} thread{'s' * (settings.get('threads', 1) != 1)} each.")
    return "\n".join(lines) + "\n\n" + note


def smooth_last(losses: list[float]) -> float:
    from archplay.viz.lab import smooth

    return float(smooth(losses)[-1]) if losses else float("nan")


def experiment_view(key: str) -> dict:
    """Everything the Experiments section shows for ``key``: {"about", "curves", "finals", "table",
    "scaling_params", "scaling_compute" (None unless the scaling experiment), "command"}."""
    exp = experiments.EXPERIMENTS.get(key)
    if exp is None:
        return {"about": error(f"no experiment {md_escape(str(key)[:40])}"), "curves": None, "finals": None,
                "table": "", "scaling_params": None, "scaling_compute": None, "command": ""}  # fmt: skip
    result, why = experiment_result(key)
    changes = " · ".join(f"**{md_escape(v.name)}**: " + ", ".join(f"{k} = {md_escape(str(x))}" for k, x in v.changes.items())
                         for v in exp.variants)  # fmt: skip
    about = f"**{md_escape(exp.question)}**\n\n{changes}\n\n*What to expect:* {md_escape(exp.expect)}"
    cmd = (f"Reproduce it (about a minute or two per run on a CPU core):\n\n"
           f"```\n{experiments.command(key, (result or {}).get('settings', {}).get('steps'))}\n```")
    if result is None:
        return {"about": about + "\n\n" + warn(md_escape(why)), "curves": None, "finals": None, "table": "",
                "scaling_params": None, "scaling_compute": None, "command": cmd}  # fmt: skip
    base = result.get("settings", {})
    about += (f"\n\n*Trained:* {base.get('steps') or exp.base['steps']} steps of {exp.base['batch']} × "
              f"{exp.base['context']} tokens on the world's first {base.get('stories', experiments.STORIES):,} stories, "
              f"seed {exp.base['seed']}; every run differs from the others only in **{md_escape(exp.option)}**.")  # fmt: skip
    runs = _curve_runs(result)
    floor = result.get("entropy_floor")
    curves = experiment_curves(runs, floor=floor, title=exp.title,
                               note="faded: each step · solid: average · ◆ validation · dashed: entropy floor")
    if floor is not None and all(r["cross_entropy"] is not None for r in runs):
        finals = gap_bars(runs, floor, title="Held-out loss after training")
    else:
        finals = final_losses(runs, floor=floor, title="Where each run ended")
    view = {"about": about, "curves": curves, "finals": finals, "table": experiment_table(result),
            "scaling_params": None, "scaling_compute": None, "command": cmd}  # fmt: skip
    if "scaling" in result:
        s = result["scaling"]
        view["scaling_params"] = scaling_chart(s["points"], s["fit_params"], x="params",
                                               title="Held-out loss against non-embedding parameters N")  # fmt: skip
        view["scaling_compute"] = scaling_chart(s["points"], s["fit_compute"], x="compute",
                                                title="Held-out loss against training compute C")  # fmt: skip
        fp, fc = s["fit_params"], s["fit_compute"]
        view["table"] += (f"\n\n**Power laws** (the floor fixed at the world's entropy): "
                          f"L = {fp['floor']:.3f} + {fp['a']:.3g} · N^(−{fp['alpha']:.3f}) (R² {fp['r2']:.3f}); "
                          f"L = {fc['floor']:.3f} + {fc['a']:.3g} · C^(−{fc['alpha']:.3f}) (R² {fc['r2']:.3f}).")  # fmt: skip
    return view


EXPERIMENT_FIELDS = ("about", "curves", "finals", "table", "scaling_params", "scaling_compute", "command")



# --------------------------------------------------------------------------- layout and wiring


CSS = """
.ap-progress { height: 10px; background: var(--neutral-200); border-radius: 5px; overflow: hidden; margin: 4px 0; }
.ap-progress-bar { height: 100%; background: var(--color-accent); transition: width 0.3s; }
.ap-progress-text { font-size: 0.9em; }
"""


def build(catalog: Catalog, lab: Lab, model_lists: list) -> SimpleNamespace:
    """The Lab tab; ``model_lists`` are dropdowns refreshed when a trained model joins the catalog."""
    ui = SimpleNamespace(opts={})
    gr.Markdown("### Architecture Lab")
    gr.Markdown(HELP, elem_classes="ap-help")
    family0, values0 = start_values("gpt")
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            ui.start = gr.Dropdown([(label, key) for label, key in STARTS], value="gpt", label="Start from",
                                   elem_id="lab-start")  # fmt: skip
            ui.family = gr.Dropdown([(family_title(f), f) for f in recipes.families()], value=family0,
                                    label="Family", elem_id="lab-family")  # fmt: skip
            shown = applies(family0, values0.get("attention"))
            with gr.Row():
                for key, label, kind, info in OPTIONS:
                    visible = key in shown
                    if isinstance(kind, tuple):
                        comp = gr.Dropdown(list(kind), value=values0.get(key), label=label, info=info, visible=visible,
                                           elem_id=f"lab-{key}", min_width=140)  # fmt: skip
                    elif kind == "bool":
                        comp = gr.Checkbox(value=bool(values0.get(key)), label=label, info=info, visible=visible,
                                           elem_id=f"lab-{key}", min_width=240)  # fmt: skip
                    else:
                        comp = gr.Number(value=values0.get(key), label=label, info=info, visible=visible,
                                         precision=0 if kind == "int" else None, elem_id=f"lab-{key}",
                                         min_width=140)  # fmt: skip
                    ui.opts[key] = comp
            ui.name = gr.Textbox(label="Name", placeholder="my-model", max_length=40, elem_id="lab-name")
        with gr.Column(scale=3, min_width=420):
            ui.summary = gr.Markdown(summary(family0, values0)[0], elem_id="lab-summary")
            with gr.Row():
                ui.train = gr.Button("Train", variant="primary", elem_id="lab-train")
                ui.stop = gr.Button("Stop", elem_id="lab-stop", interactive=False)
            ui.progress = gr.HTML("", elem_id="lab-progress")
            ui.status = gr.Markdown("", elem_id="lab-status")
            ui.curve = gr.Plot(curve_figure(family0, None, ""), elem_id="lab-curve", show_label=False)
            ui.evaluation = gr.Markdown("", elem_id="lab-evaluation")
            ui.scale_up = gr.Button("Scale this recipe up: the same design at 1.3 B and 7 B →", size="sm",
                                    elem_id="lab-scale-up")  # fmt: skip
            with gr.Accordion("The recipe as JSON (for archplay-train --recipe)", open=False):
                ui.recipe = gr.Code(summary(family0, values0)[1], language="json", interactive=False,
                                    elem_id="lab-recipe")  # fmt: skip
            with gr.Accordion("Fine-tune a built-in on your own text", open=False, elem_id="lab-tune-section"):
                gr.Markdown("Paste a text (a few paragraphs, a story, notes): a built-in continues training on it. "
                            "Its last part is held out; its perplexity and the model's continuation of its first "
                            "words are shown before and after, side by side.", elem_classes="ap-help")  # fmt: skip
                with gr.Row():
                    ui.tune_model = gr.Dropdown(list(TUNABLE), value="gpt", label="Model", elem_id="lab-tune-model",
                                                min_width=120)  # fmt: skip
                    ui.tune_steps = gr.Number(TUNE_STEPS, label="Steps", precision=0, elem_id="lab-tune-steps",
                                              min_width=100)  # fmt: skip
                    ui.tune_lr = gr.Number(TUNE_LR, label="Learning rate", elem_id="lab-tune-lr", min_width=100)
                ui.tune_text = gr.Textbox(label="Your text", lines=6, max_length=200_000, elem_id="lab-tune-text",
                                          placeholder="Paragraphs separated by blank lines…")  # fmt: skip
                with gr.Row():
                    ui.tune_variant = gr.Button("Or: a variant of the world (new names, a new object)", size="sm",
                                                elem_id="lab-tune-variant")  # fmt: skip
                    ui.tune = gr.Button("Fine-tune", elem_id="lab-tune")
                ui.tune_note = gr.Markdown("", elem_id="lab-tune-note")
    ui.run_id = gr.State(None)
    ui.timer = gr.Timer(POLL_SECONDS, active=False)

    opts = [ui.opts[k] for k in KEYS]

    # One event per user edit (``input``, not ``change``: a new start sets every option at once, and
    # a change event each would be twenty requests); the start and family events redo the summary.
    def filled(family: str, values: dict) -> list:
        shown = applies(family, values.get("attention"))
        return [*[gr.update(value=values.get(k), visible=k in shown) for k in KEYS], *summary(family, values)]

    def on_start(start):
        family, values = start_values(start)
        return [family, *filled(family, values)]

    def on_family(family):
        return filled(family, values_of(recipes.blank_recipe(family)))

    def on_change(family, *vals):
        values = dict(zip(KEYS, vals))
        window = gr.update(visible="window" in applies(family, values.get("attention")))
        return [*summary(family, values), window]

    shown_outputs = [*opts, ui.summary, ui.recipe]
    ui.start.input(on_start, inputs=ui.start, outputs=[ui.family, *shown_outputs], api_name=False,
                   show_progress="hidden")  # fmt: skip
    ui.family.input(on_family, inputs=ui.family, outputs=shown_outputs, api_name=False, show_progress="hidden")
    gr.on([comp.input for comp in opts], on_change, inputs=[ui.family, *opts],
          outputs=[ui.summary, ui.recipe, ui.opts["window"]],
          api_name=False, show_progress="hidden", trigger_mode="always_last")  # fmt: skip

    def on_train(family, name, *vals):
        values = dict(zip(KEYS, vals))
        try:
            r = recipe_from(family, values)
            if name and name.strip():
                r = r.replace(name=_slug(name.strip()))
            run_id = lab.start(r)
        except (ValueError, OSError) as e:
            return None, error(md_escape(str(e))), gr.update(), gr.Timer(active=False), gr.update(interactive=False), ""
        return (run_id, "Training started: the curve follows below.", "", gr.Timer(active=True),
                gr.update(interactive=True), "")  # fmt: skip

    ui.train.click(on_train, inputs=[ui.family, ui.name, *opts],
                   outputs=[ui.run_id, ui.status, ui.progress, ui.timer, ui.stop, ui.evaluation],
                   api_name="lab_train", show_progress="hidden")  # fmt: skip

    def on_stop(run_id):
        lab.stop(run_id)
        return "Stopping…"

    def on_tune(model, steps, lr, text):
        try:
            from archplay.models.training import finetune

            finetune.split_text(text)  # a message now rather than a failed run
            run_id = lab.start(finetune_recipe(model, steps, lr), from_=model, text=text)
        except (ValueError, OSError) as e:
            return None, error(md_escape(str(e))), gr.update(), gr.Timer(active=False), gr.update(interactive=False), ""
        return (run_id, f"Fine-tuning {md_escape(model)} on your text: the curve follows below.", "",
                gr.Timer(active=True), gr.update(interactive=True), "")  # fmt: skip

    def on_variant():
        return variant.variant_text(), variant_note()

    ui.tune_variant.click(on_variant, outputs=[ui.tune_text, ui.tune_note], api_name="lab_variant",
                          show_progress="hidden")  # fmt: skip

    ui.tune.click(on_tune, inputs=[ui.tune_model, ui.tune_steps, ui.tune_lr, ui.tune_text],
                  outputs=[ui.run_id, ui.status, ui.progress, ui.timer, ui.stop, ui.evaluation],
                  api_name="lab_finetune", show_progress="hidden")  # fmt: skip

    ui.stop.click(on_stop, inputs=ui.run_id, outputs=ui.status, api_name="lab_stop", show_progress="hidden")

    def on_tick(run_id):
        run = lab.get(run_id)
        if run is None:
            return [gr.Timer(active=False), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(),
                    *[gr.skip() for _ in model_lists]]  # fmt: skip
        state = run.job.poll()
        name = run.recipe.name or "this run"
        fig = curve_figure(run.recipe.family, state, name, world=not run.tuning)
        if state["state"] == "running":
            return [gr.skip(), progress_html(state), fig, gr.skip(), gr.skip(), gr.skip(),
                    *[gr.skip() for _ in model_lists]]  # fmt: skip
        lists = [gr.skip() for _ in model_lists]
        if state["state"] == "done":
            lab.finish(run)
            if run.key:
                status = (f"✓ Trained **{md_escape(name)}**: it is now in every model list "
                          f"(Explore, Compare, Logit lens, Architecture).")  # fmt: skip
                lists = [gr.update(choices=catalog.choices()) for _ in model_lists]
            else:
                status = warn(md_escape(run.note))
        elif state["state"] == "stopped":
            status = "Stopped. Nothing was saved."
        else:
            status = error("The run failed: " + md_escape(state.get("message") or "no message"))
        results = finetune_md(run.fine_tune, name) or evaluation_md(run.evaluation, name)
        return [gr.Timer(active=False), progress_html(state), fig, status, results,
                gr.update(interactive=False), *lists]  # fmt: skip

    ui.timer.tick(on_tick, inputs=ui.run_id,
                  outputs=[ui.timer, ui.progress, ui.curve, ui.status, ui.evaluation, ui.stop, *model_lists],
                  api_name=False, show_progress="hidden")  # fmt: skip

    ui.exp = _build_experiments()
    return ui


def _build_experiments() -> SimpleNamespace:
    """The Experiments section: precomputed runs that differ in one option, shown at once."""
    ex = SimpleNamespace()
    first = next(iter(experiments.EXPERIMENTS))
    view = experiment_view(first)
    with gr.Accordion("Experiments: change one option, see what it does", open=True, elem_id="lab-experiments"):
        ex.choice = gr.Dropdown(experiment_choices(), value=first, label="Experiment", elem_id="lab-exp-choice")
        ex.about = gr.Markdown(view["about"], elem_id="lab-exp-about")
        with gr.Row(equal_height=False):
            ex.curves = gr.Plot(view["curves"], elem_id="lab-exp-curves", show_label=False)
            ex.finals = gr.Plot(view["finals"], elem_id="lab-exp-finals", show_label=False)
        with gr.Row(equal_height=False, visible=view["scaling_params"] is not None) as ex.scaling_row:
            ex.scaling_params = gr.Plot(view["scaling_params"], elem_id="lab-exp-scaling-params", show_label=False)
            ex.scaling_compute = gr.Plot(view["scaling_compute"], elem_id="lab-exp-scaling-compute", show_label=False)
        ex.table = gr.Markdown(view["table"], elem_id="lab-exp-table")
        ex.command = gr.Markdown(view["command"], elem_id="lab-exp-command")

    def on_experiment(key):
        v = experiment_view(key)
        scaling = v["scaling_params"] is not None
        return {ex.about: v["about"], ex.curves: v["curves"], ex.finals: v["finals"], ex.table: v["table"],
                ex.command: v["command"], ex.scaling_row: gr.update(visible=scaling),
                ex.scaling_params: v["scaling_params"] if scaling else gr.skip(),
                ex.scaling_compute: v["scaling_compute"] if scaling else gr.skip()}  # fmt: skip

    ex.choice.input(on_experiment, inputs=ex.choice,
                    outputs=[ex.about, ex.curves, ex.finals, ex.table, ex.command, ex.scaling_row,
                             ex.scaling_params, ex.scaling_compute],
                    api_name="lab_experiment", show_progress="hidden")  # fmt: skip
    ex.handler = on_experiment
    return ex


__all__ = ["Lab", "build", "evaluation_md", "experiment_choices", "experiment_result", "experiment_table",
           "experiment_view", "progress_html", "recipe_from", "summary"]
