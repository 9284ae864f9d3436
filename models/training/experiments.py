"""One-click experiments: a few recipes that differ in ONE option, trained on the story world side by side.

    python -m archplay.models.training.experiments positions        # -> assets/experiments/positions.json
    python -m archplay.models.training.experiments all --parallel 2 # every experiment (about 7 min on 2 free cores)
    python -m archplay.models.training.experiments norm --out /tmp/x --steps 100

    from archplay.models.training import experiments
    experiments.EXPERIMENTS["norm"].variants       # what is compared: (name, changed keys)
    result = experiments.run("norm", "/tmp/x")     # trains every variant; writes /tmp/x/norm.json
    shipped = experiments.load_result("norm")      # the precomputed result in assets/experiments/, or None

Each experiment is a question a learner can ask ("do positions matter?"), a small base recipe, and
2–4 variants that change one option of it. ``run`` trains every variant with ``archplay-train`` (a
subprocess each, through ``jobs.start``), evaluates it on the world's truth (``--evaluate``), and
collects per variant its losses, validation, speed, parameter counts, training FLOPs and evaluation.
The ``scaling`` experiment changes the width alone and fits ``L = floor + a · x^(−α)``
(``analysis.scaling.fit_power_law``, the floor being the world's entropy floor) to the held-out
loss against non-embedding parameters N and against training compute C (≈ 6·N·D:
``flops_per_token(...)["train"]`` × training tokens).

The results ship in ``assets/experiments/KEY.json`` so the Lab page shows them at once;
``load_result`` reads one back, checked field by field (a broken or hostile file is a ValueError
naming what is wrong, a missing one None), and returns only the fields it checked.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from archplay.models.checkpoints.assets import ASSETS
from archplay.models.training.recipe import Recipe, flops_per_token, parameter_count

RESULT_DIR = ASSETS / "experiments"
FORMAT = "archplay-experiment/1"
MAX_POINTS = 500  # losses kept per variant (block means beyond)
MAX_FILE_BYTES = 4 << 20
PROG = "python -m archplay.models.training.experiments"
STORIES = 2000  # the training corpus of every run: the world's first 2,000 stories
EVALUATE = 100  # test stories each trained variant is evaluated on


@dataclass(frozen=True)
class Variant:
    """One arm of an experiment: a short name and the keys it changes in the base recipe."""

    name: str
    changes: dict


@dataclass(frozen=True)
class Experiment:
    key: str
    title: str
    question: str  # one sentence a learner understands
    base: dict  # the recipe every variant starts from
    variants: tuple[Variant, ...]
    option: str  # the option that varies (a recipe key)
    expect: str  # what the literature leads one to expect, shown beside the result

    def recipe(self, variant: Variant) -> Recipe:
        return Recipe.from_dict({**self.base, **variant.changes, "name": f"{self.key}-{_slug(variant.name)}"})


_DECODER = {"family": "decoder", "layers": 2, "width": 64, "heads": 4, "kv_heads": 4, "positions": "rope",
            "norm": "rmsnorm", "norm_position": "pre", "activation": "swiglu", "attention": "full",
            "context": 64, "steps": 300, "batch": 16, "lr": 3e-3, "seed": 0}  # fmt: skip

EXPERIMENTS: dict[str, Experiment] = {e.key: e for e in (
    Experiment(
        "positions", "Positions: sinusoidal, RoPE, ALiBi or none",
        "Does a decoder need to be told where each token is, and does the way it is told matter?",
        _DECODER,
        (Variant("sinusoidal", {"positions": "sinusoidal"}), Variant("rope", {"positions": "rope"}),
         Variant("alibi", {"positions": "alibi"}), Variant("none (NoPE)", {"positions": "none"})),
        "positions",
        "RoPE and ALiBi (relative) usually train fastest; a causal decoder with no positions at all (NoPE) "
        "still learns order from the causal mask alone, but more slowly.",
    ),
    Experiment(
        "experts", "Experts: top-1 or top-2 routing",
        "Does running two experts per token instead of one buy a lower loss, for twice the expert compute?",
        {**_DECODER, "family": "moe", "experts": 4, "load_balancing": 0.02, "shared_expert": False},
        (Variant("top-1 (Switch)", {"top_k": 1}), Variant("top-2 (Mixtral)", {"top_k": 2})),
        "top_k",
        "Top-2 (Mixtral, GShard) runs twice the expert FLOPs per token and usually reaches a somewhat lower "
        "loss than top-1 (Switch) at the same number of parameters.",
    ),
    Experiment(
        "norm", "Norm placement at a high learning rate",
        "Where the norm sits (after the residual add, or before each sublayer): does it decide whether "
        "training survives a high learning rate?",
        {**_DECODER, "norm": "layernorm", "lr": 3e-2},
        (Variant("post-norm", {"norm_position": "post"}), Variant("pre-norm", {"norm_position": "pre"})),
        "norm_position",
        "Post-norm (the original Transformer, BERT) needs a careful warm-up and a small learning rate; "
        "pre-norm (GPT-2, Llama) keeps a clean residual path and trains at a much higher one (Xiong et al. 2020).",
    ),
    Experiment(
        "attention", "Attention patterns: full, sliding or strided",
        "If each query may look at only 16 keys (the nearest ones, or the nearest plus every 16th), "
        "how much does the model lose?",
        {**_DECODER, "context": 128},
        (Variant("full", {"attention": "full"}), Variant("sliding 16", {"attention": "sliding", "window": 16}),
         Variant("strided 16", {"attention": "strided", "window": 16})),
        "attention",
        "Most of a next-token loss is local, so a 16-token window loses little; what it loses is the long "
        "reach (a name from two sentences back), which the strided pattern partly keeps.",
    ),
    Experiment(
        "scaling", "Scaling: loss against size and compute",
        "If the same decoder is made wider, how does its loss fall with its size and its training compute?",
        {**_DECODER, "steps": 400},
        (Variant("width 32", {"width": 32}), Variant("width 64", {"width": 64}), Variant("width 96", {"width": 96}),
         Variant("width 128", {"width": 128})),
        "width",
        "The loss above the floor falls as a power of size, L − floor ≈ a · N^(−α) (Kaplan et al. 2020), "
        "while the runs are far from converged.",
    ),
)}  # fmt: skip


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").lower() or "run"


def command(key: str, steps: int | None = None) -> str:
    """The one command that reproduces an experiment's shipped result."""
    return f"{PROG} {key}" + (f" --steps {steps}" if steps else "")


# --------------------------------------------------------------------------- running


def run(key: str, out_dir: str | Path | None = None, *, steps: int | None = None, stories: int | None = None,
        threads: int | None = None, evaluate: int = EVALUATE, parallel: int = 1, work: str | Path | None = None,
        log=None) -> dict:  # fmt: skip
    """Train every variant of experiment ``key``; the result dict, also written to ``out_dir/KEY.json``
    (default ``assets/experiments``). ``steps`` / ``stories`` override the base recipe's steps and the
    corpus (default 2,000 stories); ``threads`` torch threads per run (default 1); ``evaluate`` test
    stories each run is measured on; ``parallel`` runs at once; ``work`` keeps the checkpoints there
    (default: a temporary folder, removed). RuntimeError when a run fails."""
    from archplay.models.training import jobs

    exp = _get(key)
    out_dir = Path(out_dir) if out_dir is not None else RESULT_DIR
    stories = STORIES if stories is None else stories
    threads = 1 if threads is None else threads
    log = log or (lambda line: None)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"archplay-{key}-") as tmp:
        root = Path(work) if work is not None else Path(tmp)
        pending = [(v, exp.recipe(v), root / key / _slug(v.name)) for v in exp.variants]
        running: list[tuple] = []
        records: dict[str, dict] = {}
        while pending or running:
            while pending and len(running) < max(1, parallel):
                v, r, folder = pending.pop(0)
                log(f"{key}: training {v.name} ({parameter_count(r)['total']:,} parameters)")
                running.append((v, jobs.start(r, folder, steps=steps, threads=threads, stories=stories,
                                              evaluate=evaluate)))  # fmt: skip
            v, job = running.pop(0)
            state = job.wait()
            if state["state"] != "done":
                for _, other in running:
                    other.stop()
                raise RuntimeError(f"experiment {key}: the {v.name} run {state['state']}: {state.get('message', '')}")
            records[v.name] = json.loads((job.out / "training.json").read_text(encoding="utf-8"))
            log(f"{key}: {v.name} done in {records[v.name]['seconds']:.0f} s, "
                f"loss {records[v.name]['losses'][-1]:.3f}")  # fmt: skip
    result = _result(exp, [(v, records[v.name]) for v in exp.variants], steps=steps, stories=stories,
                     threads=threads, evaluate=evaluate, parallel=parallel)  # fmt: skip
    result["seconds"] = round(time.monotonic() - started, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{key}.json").write_text(json.dumps(result, separators=(",", ":")) + "\n", encoding="utf-8")
    return result


def _result(exp: Experiment, runs: list[tuple[Variant, dict]], **settings) -> dict:
    variants = [_variant(v, record) for v, record in runs]
    floors = [v["evaluation"]["lm"]["entropy_floor"] for v in variants if "lm" in (v["evaluation"] or {})]
    result = {
        "format": FORMAT, "key": exp.key, "title": exp.title, "question": exp.question, "option": exp.option,
        "expect": exp.expect, "base": Recipe.from_dict(exp.base).to_dict(),
        "command": command(exp.key, settings["steps"]), "settings": settings,
        "entropy_floor": round(floors[0], 6) if floors else None, "variants": variants,
    }  # fmt: skip
    if exp.key == "scaling" and floors:
        result["scaling"] = scaling_fit(variants, floors[0])
    return result


def _variant(v: Variant, record: dict) -> dict:
    r = Recipe.from_dict(record["recipe"])
    counts = parameter_count(r)
    flops = flops_per_token(r)
    losses, stride = thin([float(x) for x in record["losses"]])
    val = record.get("validation") or {}
    ev = record.get("evaluation")
    return {
        "name": v.name, "changes": v.changes, "recipe": r.to_dict(),
        "losses": [round(x, 4) for x in losses], "loss_stride": stride,
        "validation": [[int(s), round(float(x), 4)] for s, x in zip(val.get("step", []), val.get("loss", []))],
        "tokens_per_s": record.get("tokens_per_s"), "seconds": record.get("seconds"), "tokens": record.get("tokens"),
        "params": {"total": counts["total"], "active": counts["active"], "embedding": counts["embedding"],
                   "non_embedding": counts["total"] - counts["embedding"]},
        "flops_per_token": flops["train"], "train_flops": float(flops["train"]) * int(record.get("tokens") or 0),
        "evaluation": _rounded(ev) if ev is not None else None,
    }  # fmt: skip


def thin(losses: list[float], most: int = MAX_POINTS) -> tuple[list[float], int]:
    """(at most ``most`` points, the steps each stands for): block means of ``stride`` steps."""
    stride = max(1, math.ceil(len(losses) / most))
    if stride == 1:
        return losses, 1
    return [sum(b) / len(b) for b in (losses[i : i + stride] for i in range(0, len(losses), stride))], stride


def _rounded(x):
    if isinstance(x, float):
        return round(x, 5)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return x


def scaling_points(variants: list[dict]) -> list[dict]:
    """{"name", "params" (non-embedding), "compute" (training FLOPs), "loss" (held-out cross-entropy)} per run."""
    return [{"name": v["name"], "params": v["params"]["non_embedding"], "compute": v["train_flops"],
             "loss": v["evaluation"]["lm"]["cross_entropy"]} for v in variants]  # fmt: skip


def scaling_fit(variants: list[dict], floor: float) -> dict:
    """The points and the power laws fitted to them, against parameters and against compute."""
    from archplay.models.analysis.scaling import fit_power_law

    points = scaling_points(variants)
    losses = [p["loss"] for p in points]
    return {"points": points, "floor": floor,
            "fit_params": fit_power_law([p["params"] for p in points], losses, floor=floor),
            "fit_compute": fit_power_law([p["compute"] for p in points], losses, floor=floor)}  # fmt: skip


# --------------------------------------------------------------------------- reading a shipped result


def load_result(key: str, folder: str | Path | None = None) -> dict | None:
    """The result of experiment ``key`` in ``folder`` (default ``assets/experiments``): None if there
    is none; a ValueError naming the problem if the file is not a valid result; else the checked result."""
    _get(key)
    path = Path(folder) if folder is not None else RESULT_DIR
    path = path / f"{key}.json"
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ValueError(f"{path} is larger than {MAX_FILE_BYTES:,} bytes; an experiment's result is small")
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ValueError(f"{path} is not readable JSON: {str(e)[:200]}") from None
    try:
        return check_result(data, key)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number an experiment records")


def check_result(data: object, key: str) -> dict:
    """A clean copy of the fields of a result that the page uses, each checked; ValueError otherwise."""
    exp = _get(key)
    d = _dict(data, "the result")
    if d.get("format") != FORMAT:
        raise ValueError(f"format must be {FORMAT!r}, got {_show(d.get('format'))}")
    if d.get("key") != key:
        raise ValueError(f"this file is the result of {_show(d.get('key'))}, not of {key!r}")
    raw = d.get("variants")
    if not isinstance(raw, list) or not 1 <= len(raw) <= 8:
        raise ValueError("variants must be a list of 1 to 8 runs")
    variants = [_check_variant(v, i) for i, v in enumerate(raw)]
    floor = d.get("entropy_floor")
    settings = _dict(d.get("settings", {}), "settings")
    settings = {k: _int(settings[k], f"settings.{k}", 0) for k in ("steps", "stories", "threads", "evaluate", "parallel")
                if settings.get(k) is not None}  # fmt: skip
    out = {
        "format": FORMAT, "key": key, "title": _text(d.get("title", exp.title), "title", 200),
        "question": _text(d.get("question", exp.question), "question", 400),
        "expect": _text(d.get("expect", exp.expect), "expect", 600), "option": exp.option,
        "command": command(key, settings.get("steps")), "settings": settings,
        "entropy_floor": None if floor is None else _number(floor, "entropy_floor"),
        "seconds": _number(d.get("seconds", 0.0), "seconds"), "variants": variants,
    }  # fmt: skip
    if key == "scaling":
        s = _dict(d.get("scaling"), "scaling")
        points = s.get("points")
        if not isinstance(points, list) or len(points) != len(variants):
            raise ValueError("scaling.points must hold one point per variant")
        out["scaling"] = {
            "points": [{"name": _text(p.get("name"), "point name", 64), "params": _number(p.get("params"), "params"),
                        "compute": _number(p.get("compute"), "compute"), "loss": _number(p.get("loss"), "loss")}
                       for p in (_dict(p, "a scaling point") for p in points)],
            "floor": _number(s.get("floor"), "scaling.floor"),
            "fit_params": _fit(s.get("fit_params"), "fit_params"), "fit_compute": _fit(s.get("fit_compute"), "fit_compute"),
        }  # fmt: skip
    return out


def _check_variant(v: object, i: int) -> dict:
    v = _dict(v, f"variant {i}")
    where = f"variant {i}"
    losses = v.get("losses")
    if not isinstance(losses, list) or not 1 <= len(losses) <= 100_000:
        raise ValueError(f"{where}: losses must be a list of 1 to 100,000 numbers")
    params = _dict(v.get("params"), f"{where}.params")
    ev = v.get("evaluation")
    validation = v.get("validation", [])
    if not isinstance(validation, list) or len(validation) > 10_000:
        raise ValueError(f"{where}: validation must be a list of [step, loss] pairs")
    return {
        "name": _text(v.get("name"), f"{where}.name", 64),
        "changes": _dict(v.get("changes", {}), f"{where}.changes"),
        "recipe": _dict(v.get("recipe", {}), f"{where}.recipe"),
        "losses": [_number(x, f"{where}.losses") for x in losses],
        "loss_stride": _int(v.get("loss_stride", 1), f"{where}.loss_stride", 1),
        "validation": [[_number(p[0], f"{where}.validation"), _number(p[1], f"{where}.validation")]
                       for p in validation if isinstance(p, list) and len(p) == 2],
        "tokens_per_s": _number(v.get("tokens_per_s", 0.0), f"{where}.tokens_per_s"),
        "seconds": _number(v.get("seconds", 0.0), f"{where}.seconds"),
        "tokens": _int(v.get("tokens", 0), f"{where}.tokens", 0),
        "params": {k: _int(params.get(k), f"{where}.params.{k}", 0) for k in ("total", "active", "embedding", "non_embedding")},
        "flops_per_token": _number(v.get("flops_per_token", 0.0), f"{where}.flops_per_token"),
        "train_flops": _number(v.get("train_flops", 0.0), f"{where}.train_flops"),
        "evaluation": None if ev is None else _evaluation(ev, f"{where}.evaluation"),
    }  # fmt: skip


def _evaluation(ev: object, where: str) -> dict:
    """The parts of an evaluation (``evaluate.evaluate_model``) a causal model has, each checked."""
    ev = _dict(ev, where)
    out: dict = {"family": _text(ev.get("family", ""), f"{where}.family", 40), "trained": True}
    if "lm" in ev:
        lm = _dict(ev["lm"], f"{where}.lm")
        out["lm"] = {k: _number(lm.get(k), f"{where}.lm.{k}") for k in ("cross_entropy", "entropy_floor", "gap")}
        out["lm"]["tokens"] = _int(lm.get("tokens"), f"{where}.lm.tokens", 0)
    if "coreference" in ev:
        c = _dict(ev["coreference"], f"{where}.coreference")
        out["coreference"] = {"layer": _int(c.get("layer"), f"{where}.coreference.layer", 0),
                              "head": _int(c.get("head"), f"{where}.coreference.head", 0),
                              "rate": _number(c.get("rate"), f"{where}.coreference.rate"),
                              "pronouns": _int(c.get("pronouns"), f"{where}.coreference.pronouns", 0)}  # fmt: skip
    if "routing" in ev:
        r = _dict(ev["routing"], f"{where}.routing")
        load, mi = r.get("load"), r.get("mi_pos_bits")
        if not isinstance(load, list) or not isinstance(mi, list) or len(load) != len(mi) or len(load) > 64:
            raise ValueError(f"{where}.routing: load and mi_pos_bits must be lists, one entry per layer")
        rows = []
        for row in load:
            if not isinstance(row, list) or not 1 <= len(row) <= 64:
                raise ValueError(f"{where}.routing.load: each layer's load is a list of 1 to 64 shares")
            rows.append([_number(x, f"{where}.routing.load") for x in row])
        out["routing"] = {"load": rows, "min_load": min((min(x) for x in rows), default=0.0),
                          "mi_pos_bits": [_number(x, f"{where}.routing.mi_pos_bits") for x in mi],
                          "pos_entropy_bits": _number(r.get("pos_entropy_bits"), f"{where}.routing.pos_entropy_bits")}  # fmt: skip
    return out


def _fit(f: object, where: str) -> dict:
    f = _dict(f, where)
    return {k: _number(f.get(k), f"{where}.{k}") for k in ("a", "alpha", "floor", "r2")}


def _dict(x: object, where: str) -> dict:
    if not isinstance(x, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(x).__name__}")
    return x


def _text(x: object, where: str, most: int) -> str:
    if not isinstance(x, str) or len(x) > most:
        raise ValueError(f"{where} must be a text of at most {most} characters")
    return x


def _number(x: object, where: str) -> float:
    if not isinstance(x, (int, float)) or isinstance(x, bool) or not math.isfinite(x):
        raise ValueError(f"{where} must be a finite number, got {_show(x)}")
    return float(x)


def _int(x: object, where: str, low: int) -> int:
    if not isinstance(x, int) or isinstance(x, bool) or not low <= x <= 10**15:
        raise ValueError(f"{where} must be a whole number ≥ {low}, got {_show(x)}")
    return x


def _show(x: object) -> str:
    text = repr(x)
    return text if len(text) <= 40 else text[:37] + "..."


def _get(key: object) -> Experiment:
    if not isinstance(key, str) or key not in EXPERIMENTS:
        raise ValueError(f"no experiment {_show(key)}; experiments: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[key]


# --------------------------------------------------------------------------- the command


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("name", choices=[*EXPERIMENTS, "all"], help="the experiment to run, or all of them")
    p.add_argument("--out", type=Path, default=RESULT_DIR, help=f"where NAME.json goes (default {RESULT_DIR})")
    p.add_argument("--steps", type=int, help="override every run's steps (default: the experiment's)")
    p.add_argument("--stories", type=int, default=STORIES, help=f"training stories (default {STORIES})")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--parallel", type=int, default=1, help="runs at once (default 1)")
    p.add_argument("--evaluate", type=int, default=EVALUATE, help=f"test stories per evaluation (default {EVALUATE})")
    p.add_argument("--work", type=Path, help="keep the trained checkpoints here (default: not kept)")
    args = p.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        p.error("--steps must be at least 1")
    if not 1 <= args.parallel <= (os.cpu_count() or 1) * 4:
        p.error("--parallel must be between 1 and four times the number of cores")
    keys = list(EXPERIMENTS) if args.name == "all" else [args.name]
    for key in keys:
        try:
            result = run(key, args.out, steps=args.steps, stories=args.stories, threads=args.threads,
                         evaluate=args.evaluate, parallel=args.parallel, work=args.work,
                         log=lambda line: print(line, file=sys.stderr, flush=True))  # fmt: skip
        except (RuntimeError, ValueError) as e:
            print(f"{PROG}: error: {e}", file=sys.stderr, flush=True)
            return 1
        print(f"{key}: {len(result['variants'])} runs in {result['seconds']:.0f} s -> {args.out / (key + '.json')}")
        for v in result["variants"]:
            lm = (v["evaluation"] or {}).get("lm", {})
            print(f"  {v['name']:>16}: train loss {v['losses'][-1]:.3f}, held-out {lm.get('cross_entropy', math.nan):.3f} "
                  f"(gap {lm.get('gap', math.nan):.3f}), {v['params']['total']:,} parameters, {v['seconds']:.0f} s")  # fmt: skip
        if "scaling" in result:
            fp, fc = result["scaling"]["fit_params"], result["scaling"]["fit_compute"]
            print(f"  fit: alpha_N = {fp['alpha']:.3f} (R² {fp['r2']:.3f}), alpha_C = {fc['alpha']:.3f} (R² {fc['r2']:.3f})")
    return 0


__all__ = ["EXPERIMENTS", "Experiment", "Variant", "check_result", "command", "load_result", "run", "scaling_fit",
           "thin"]  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
