"""``archplay-train``: train a recipe on the story world and write a checkpoint ``load`` opens.

    archplay-train --recipe R.json --out DIR                      # train from scratch
    archplay-train --recipe R.json --out DIR --steps 50           # a shorter run
    archplay-train --from gpt --out DIR --steps 200               # fine-tune a built-in with its own recipe
    archplay-train --recipe R.json --from DIR0 --out DIR          # fine-tune a folder with R's schedule
    archplay-train --recipe R.json --out DIR --nproc 2            # DistributedDataParallel, 2 processes
    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m archplay.models.training.cli --recipe R.json --out DIR # several machines: torchrun's own flags

DIR gets ``config.json`` and ``model.safetensors`` (the built-ins' ``archplay-builtin/1`` format)
and ``training.json``: ``losses`` (one per step), ``validation``, ``recipe``, ``tokens_per_s``,
``seconds``. A TTY shows a progress bar; ``--json-progress`` prints one JSON object per step on
stdout ({"step", "steps", "loss", "tokens_per_s", "elapsed_s", "eta_s"}, with "validation_loss"
when measured) and a last {"done": true, "out": DIR}, for a program that follows the run.

``--from`` continues a trained model: the architecture is the loaded model's and all its weights
train; the recipe gives the schedule (steps, batch, lr, seed, context, load balancing). Its
``family`` must be the model's; any other architecture key that differs is ignored, and said so
on stderr. Without ``--recipe`` the model's own recipe is used (a built-in's from assets/recipes/,
a folder's from its training.json).

``--nproc N`` starts N processes on this machine through torch's launcher (torchrun's elastic
agent; gloo on CPUs, NCCL on GPUs) with the rendezvous on 127.0.0.1 only. Every process draws the
same global batch (the recipe's ``batch``) and trains on its slice, so 1 and N processes compute
the same losses; rank 0 logs and saves. Started by torchrun itself (``RANK``/``WORLD_SIZE`` set),
it joins that run instead, on as many machines as torchrun was told.

Bad input (a recipe that does not validate, a missing file, ``--out`` naming a file, ``--steps``
below 1) is a one-line message on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from archplay.models import story
from archplay.models.checkpoints.convert import LoadError
from archplay.models.training import finetune, train
from archplay.models.training.recipe import BUILTIN_RECIPES, Recipe, builtin_recipe, config_for

PROG = "archplay-train"
MAX_PROCESSES = 64


class UsageError(Exception):
    """Bad input: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage and exits; we report one line
        raise UsageError(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--recipe", type=Path, help="the recipe's JSON file (optional with --from)")
    p.add_argument("--out", type=Path, required=True, help="the folder to write the checkpoint to")
    p.add_argument("--steps", type=int, help="override the recipe's number of steps")
    p.add_argument("--nproc", type=int, default=1, help="data-parallel processes on this machine (default 1)")
    p.add_argument("--from", dest="from_", metavar="NAME_OR_DIR", help="fine-tune a built-in or a checkpoint folder")
    p.add_argument("--json-progress", action="store_true", help="one JSON line per step on stdout")
    p.add_argument("--threads", type=int, help="torch threads per process (default: torch's choice)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: a GPU when there is one (default)")  # fmt: skip
    p.add_argument("--stories", type=int,
                   help="train on the first N stories of the world (default all 14,000): for quick runs")  # fmt: skip
    p.add_argument("--text", type=Path, metavar="FILE",
                   help="with --from: fine-tune on this UTF-8 text instead of the story world (its last tenth is "
                        "held out; perplexity and a continuation before and after go into training.json)")  # fmt: skip
    p.add_argument("--evaluate", type=int, default=0, metavar="N",
                   help="then evaluate on the world's truth (gap to the entropy floor, masked-word accuracy, "
                        "translation, expert load, coreference head) over N test stories, into training.json "
                        "(default 0: no evaluation)")  # fmt: skip
    return p


# --------------------------------------------------------------------------- the plan


@dataclass
class Plan:
    """Everything a run needs, checked before any process starts."""

    recipe: Recipe
    out: Path
    steps: int
    from_: str | None
    stories: int | None
    device: str
    threads: int | None
    json_progress: bool
    evaluate: int = 0
    text: str | None = None  # fine-tuning on a text of one's own (with from_)


def plan(args: argparse.Namespace) -> Plan:
    """Check the arguments; UsageError (or ValueError / LoadError from the recipe) if anything is off."""
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    if not 1 <= args.nproc <= MAX_PROCESSES:
        raise UsageError(f"--nproc must be between 1 and {MAX_PROCESSES}, got {args.nproc}")
    if args.threads is not None and not 1 <= args.threads <= 1024:
        raise UsageError(f"--threads must be between 1 and 1024, got {args.threads}")
    if not 0 <= args.evaluate <= 2000:
        raise UsageError(f"--evaluate must be between 0 and 2000 stories, got {args.evaluate}")
    text = None
    if args.text is not None:
        if args.from_ is None:
            raise UsageError("--text fine-tunes a model: give --from NAME_OR_DIR too")
        try:
            text = args.text.read_text(encoding="utf-8")[: finetune.MAX_CHARS]
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"--text {args.text}: could not be read as UTF-8 text ({type(e).__name__})") from None
        finetune.split_text(text)  # ValueError now, not after the model is built
    if args.stories is not None and not 20 <= args.stories <= 14000:
        raise UsageError(f"--stories must be between 20 and 14000, got {args.stories}")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file; give a folder (it is created if missing)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no GPU is available")
    if args.recipe is not None:
        recipe = Recipe.from_json(args.recipe)
    elif args.from_ is not None:
        recipe = own_recipe(args.from_).replace(name=None)  # the new model is named after its folder
    else:
        raise UsageError("give --recipe R.json (or --from NAME_OR_DIR to fine-tune with the model's own recipe)")
    if args.from_ is not None:
        _same_family(args.from_, trainable_meta(args.from_)["family"], recipe)
    if recipe.name is None:
        recipe = recipe.replace(name=(args.out.resolve().name or "lab")[:64])
    steps = args.steps or recipe.steps
    recipe = recipe.replace(steps=steps)
    if recipe.batch < args.nproc:
        raise UsageError(f"the batch ({recipe.batch}) must be at least the number of processes ({args.nproc})")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if text is not None and recipe.objective != "next-token":
        raise UsageError(f"--text: only a model that continues text (next-token) can be fine-tuned on a text; "
                         f"{args.from_} is {recipe.objective}")  # fmt: skip
    return Plan(recipe, args.out, steps, args.from_, args.stories, device, args.threads, args.json_progress,
                args.evaluate, text)


def own_recipe(source: str) -> Recipe:
    """The recipe a built-in or an ``archplay-train`` folder was made with."""
    if source in BUILTIN_RECIPES:
        return builtin_recipe(source)
    record = Path(source) / "training.json"
    try:
        return Recipe.from_dict(json.loads(record.read_text(encoding="utf-8"))["recipe"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"{source} has no recipe (training.json from archplay-train); give --recipe") from None


def start_model(p: Plan):
    """(model, tokenizer, notes): fresh from the recipe (seeded), or loaded for ``--from`` and renamed."""
    if p.from_ is None:
        model, tok = train.build(p.recipe.schedule(), p.recipe.seed)
        return model, tok, []
    model, tok = load_trainable(p.from_)
    _same_family(p.from_, model.config.family, p.recipe)
    notes = architecture_notes(p.recipe, tok, model.config)
    model.config.name = p.recipe.title
    return model.train(), tok, notes


def _same_family(source: str, family: str, recipe: Recipe) -> None:
    if family != recipe.family:
        raise UsageError(f"--from {source} is a model of the {family} family; the recipe is for the {recipe.family} family")


def trainable_meta(source: str) -> dict:
    """The ``config.json`` of a built-in or an ``archplay-train`` folder (plus its ``folder``); UsageError otherwise."""
    from archplay.models.checkpoints.loading import BUILTIN_DIR, BUILTIN_NAMES

    folder = BUILTIN_DIR / source if source in BUILTIN_NAMES else Path(source)
    try:
        meta = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(f"--from {source}: not a built-in ({', '.join(BUILTIN_NAMES)}) or a readable "
                         f"checkpoint folder ({type(e).__name__})") from None  # fmt: skip
    if not isinstance(meta, dict) or meta.get("format") != "archplay-builtin/1" or "family" not in meta:
        raise UsageError(f"--from {source}: only archplay's own checkpoints (a built-in or an archplay-train "
                         "folder) can be fine-tuned on the story world")  # fmt: skip
    return {**meta, "folder": folder}


def load_trainable(source: str):
    """A built-in or a folder written by ``save_builtin`` (the story world's tokenizer is needed to train)."""
    from archplay.models.checkpoints.loading import load_builtin
    from archplay.models.story.tokenizer import SPTokenizer

    model, tok = load_builtin(trainable_meta(source)["folder"])
    if not isinstance(tok, SPTokenizer):
        raise UsageError(f"--from {source}: its tokenizer is not the story world's")
    return model, tok


def architecture_notes(recipe: Recipe, tok, cfg) -> list[str]:
    """The architecture fields where the recipe differs from the loaded model's config (ignored)."""
    try:
        wanted = config_for(recipe, tok).to_dict()
    except ValueError as e:
        return [f"the recipe's architecture could not be compared ({e}); the loaded model's is used"]
    have = cfg.to_dict()
    skip = {"name", "trained", "bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"}
    diff = sorted(k for k in wanted if k not in skip and wanted[k] != have.get(k))
    if not diff:
        return []
    return [f"ignoring the recipe's architecture where it differs from the loaded model ({', '.join(diff)}): "
            "fine-tuning keeps the model's own"]  # fmt: skip


# --------------------------------------------------------------------------- running


def splits_for(stories: int | None) -> dict:
    if stories is None:
        return story.make_splits(seed=0)
    return story.make_splits(seed=0, n_train=stories, n_valid=max(20, stories // 10), n_test=20)


def run(p: Plan, world: train.World) -> Path:
    """Train as one process of ``world``; rank 0 writes the checkpoint and returns its folder."""
    if p.threads:
        torch.set_num_threads(p.threads)
    device = f"cuda:{world.local_rank}" if p.device == "cuda" else "cpu"
    if p.device == "cuda":
        torch.cuda.set_device(device)
    show = Progress(p.recipe.title, p.json_progress) if world.main else None
    model, tok, notes = start_model(p)
    if show:
        for note in notes:
            show.note(note)
        show.note(f"training {p.recipe.title}: {p.steps} steps of {p.recipe.batch} "
                  f"on {world.size} process{'es' if world.size > 1 else ''} ({device})")  # fmt: skip
    schedule, splits, tuned = p.recipe.schedule(), None, None
    if p.text is not None:  # the user's text instead of the story world: held-out measures before and after
        training, held_out = finetune.split_text(p.text)
        n_train, n_held = finetune.check_sizes(tok, training, held_out)
        schedule = dataclasses.replace(schedule, seq_len=min(schedule.seq_len, n_train - 2, n_held - 2))
        splits = {"train": training, "validation": held_out}
        tuned = {"train_tokens": n_train, "held_out_tokens": n_held, "passages": [len(training), len(held_out)],
                 "before": finetune.snapshot(model, tok, held_out, schedule.seq_len) if world.main else None}  # fmt: skip
        model.train()
        if show:
            show.note(f"fine-tuning on {n_train:,} tokens of your text ({n_held:,} held out)")
    record = train.fit(model, tok, schedule, splits or splits_for(p.stories), seed=p.recipe.seed, world=world,
                       device=device, on_step=show.step if show else None)  # fmt: skip
    if not world.main:
        return p.out
    if tuned is not None:
        tuned["after"] = finetune.snapshot(model, tok, splits["validation"], schedule.seq_len)
    record = {"recipe": p.recipe.to_dict(), "from": p.from_, "notes": notes, **record}
    if tuned is not None:
        record["fine_tune"] = tuned
    from archplay.models.checkpoints.loading import save_builtin

    save_builtin(model.cpu().eval(), tok, p.out, training=record)
    if p.evaluate:
        show.note(f"evaluating on {p.evaluate} test stories of the world…")
        record["evaluation"] = evaluate_on(model, tok, p.evaluate)
        save_builtin(model, tok, p.out, training=record)
    show.finish(p.out, record)
    return p.out


def evaluate_on(model, tok, n: int) -> dict:
    """The evaluate module's measures (gap to the floor, masked-word accuracy, translation, routing,
    coreference) on the first ``n`` stories of the world's test split."""
    from archplay.models.training.evaluate import evaluate_model

    stories = story.make_splits(seed=0, n_train=0, n_valid=0, n_test=n)["test"]
    with torch.inference_mode():
        return evaluate_model(model.eval(), tok, stories)


class Progress:
    """Rank 0's report: a bar on a TTY, JSON lines with ``--json-progress``, else a line per validation."""

    def __init__(self, name: str, json_lines: bool):
        self.name, self.json = name, json_lines
        self.tty = not json_lines and sys.stderr.isatty()
        self.val: float | None = None

    def note(self, line: str) -> None:
        print(f"{PROG}: {line}", file=sys.stderr, flush=True)

    def step(self, s: dict) -> None:
        self.val = s.get("validation_loss", self.val)
        if self.json:
            print(json.dumps(s), flush=True)
            return
        line = train._progress(self.name, s["step"], s["steps"], s["loss"], self.val, s["elapsed_s"], s["tokens_per_s"])
        if self.tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif "validation_loss" in s:
            print(line, file=sys.stderr, flush=True)

    def finish(self, out: Path, record: dict) -> None:
        if self.tty:
            print(file=sys.stderr)
        val = record["validation"]["loss"][-1] if record["validation"]["loss"] else float("nan")
        summary = (f"{self.name}: {record['steps']} steps in {record['seconds']:.1f} s "
                   f"({record['tokens_per_s']:,.0f} tokens/s), train loss {record['losses'][-1]:.3f}, "
                   f"validation loss {val:.3f} -> {out}")  # fmt: skip
        if self.json:
            print(summary, file=sys.stderr, flush=True)
            print(json.dumps({"done": True, "out": str(out)}), flush=True)
        else:
            print(summary, flush=True)


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    """A TCP port free on the loopback interface (the launcher's store binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_interface() -> str | None:
    """The loopback network interface's name (``lo`` on Linux), for gloo and NCCL to bind to."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except (OSError, AttributeError):
        return None
    return next((n for n in names if n.startswith("lo")), None)


def launch(p: Plan, argv: list[str], nproc: int) -> int:
    """Run this command again as ``nproc`` processes under torch's elastic launcher, on 127.0.0.1 only."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    worker_argv = _without_nproc(argv)
    args = ["--nnodes", "1", "--nproc-per-node", str(nproc), "--rdzv-backend", "static", "--node-rank", "0",
            "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "--max-restarts", "0",
            "--module", "archplay.models.training.cli", *worker_argv]  # fmt: skip
    env = {"MASTER_ADDR": "127.0.0.1"}
    if (lo := loopback_interface()) is not None:
        env |= {"GLOO_SOCKET_IFNAME": lo, "NCCL_SOCKET_IFNAME": lo}
    if p.threads:
        env["OMP_NUM_THREADS"] = str(p.threads)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        torchrun.main(args)
    except ChildFailedError as e:
        failures = "; ".join(f"rank {r}: {f.message or f'exit {f.exitcode}'}" for r, f in e.failures.items())
        print(f"{PROG}: a training process failed ({failures[:500]})", file=sys.stderr, flush=True)
        return 1
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return 0


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser().parse_args(argv)
        p = plan(args)
    except (UsageError, ValueError, LoadError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr, flush=True)
        return 2
    world = train.World.from_env()
    if world.size == 1 and args.nproc > 1:
        return launch(p, argv, args.nproc)
    if world.size > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if p.device == "cuda" else "gloo")
    try:
        run(p, world)
    except (UsageError, ValueError, LoadError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr, flush=True)
        return 2
    finally:
        if world.size > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
