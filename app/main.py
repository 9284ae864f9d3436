"""Command line and composition: ``archplay [--host H] [--port P] [--model NAME_OR_FOLDER]... [--device D]``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

import gradio as gr
import torch
from gradio.route_utils import FnIndexInferError
from starlette.middleware import Middleware

from . import anatomy, card, compare, embeddings, guard, interventions, lab, lens, memory, scale, steps
from .catalog import Catalog
from .explore import page as explore

TITLE = "archplay"
THEME = gr.themes.Default(primary_hue="blue", secondary_hue="slate", neutral_hue="slate")
CSS = explore.CSS + card.CSS + lab.CSS + scale.CSS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="archplay",
        description="A browser playground for exploring how LLM architectures work.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on (default: 7860)")
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME_OR_FOLDER_OR_HUB_ID",
        help="a built-in name, a local Hugging Face checkpoint folder or a Hugging Face id ORG/NAME[@REVISION] "
        "(read from the Hugging Face cache, downloaded if missing unless HF_HUB_OFFLINE=1) to offer; repeatable. "
        "Built-ins are always offered.",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where models run; auto = cuda when available (default: auto)")  # fmt: skip
    p.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                   help="the dtype checkpoints load in; auto = each checkpoint's own (its config.json), the built-ins "
                        "fp32 (default: auto)")  # fmt: skip
    p.add_argument("--device-map", choices=("auto",), default=None,
                   help="auto: spread a model too big for one device over the GPUs and the CPU, through accelerate "
                        "(pip install 'archplay[big]')")  # fmt: skip
    p.add_argument("--models-dir", default=None, metavar="DIR",
                   help="a folder of checkpoint folders the page may load by name (nothing outside it)")  # fmt: skip
    p.add_argument("--allow-downloads", action="store_true",
                   help="let the page's load box download Hugging Face repositories the cache lacks (off by default: "
                        "on 127.0.0.1 it loads only cached ones; a server on another address loads no ids at all)")  # fmt: skip
    p.add_argument("--auth", default=None, metavar="USER:PASSWORD",
                   help="ask for this user name and password before showing the page")  # fmt: skip
    p.add_argument("--share", action="store_true", help="also open a public Gradio share link (off by default)")
    p.add_argument("--max-sessions", type=int, default=MAX_SESSIONS, metavar="N",
                   help="keep the last Run of at most N visitors (browser tabs) in memory; the least recently "
                        f"used is dropped first and its visitor presses Run again (default: {MAX_SESSIONS})")  # fmt: skip
    p.add_argument("--max-queued-per-address", type=int, default=0, metavar="N",
                   help="at most N waiting requests of one kind from one network address; 0 = no limit "
                        "(the default: a classroom behind one router shares an address)")  # fmt: skip
    p.add_argument("--lab-dir", default=None, metavar="DIR",
                   help="where the Lab tab's training runs write their checkpoints (default: a new temporary folder)")
    p.add_argument("--lab-jobs", type=int, default=1, metavar="N",
                   help="at most N Lab trainings at once, each in its own process on one thread (default: 1; 0 turns "
                        "training off)")  # fmt: skip
    p.add_argument("--lab-stories", type=int, default=None, metavar="N",
                   help="train Lab models on the first N stories of the world (quicker runs; default: all 14,000)")
    args = p.parse_args(argv)
    if args.lab_stories is not None and not 20 <= args.lab_stories <= 14000:
        p.error("--lab-stories takes a whole number between 20 and 14000")
    if args.lab_jobs < 0:
        p.error("--lab-jobs takes a whole number of at least 0")
    if args.auth is not None and (":" not in args.auth or not args.auth.split(":", 1)[0]):
        p.error("--auth takes USER:PASSWORD")
    if args.max_sessions < 1:
        p.error("--max-sessions takes a whole number of at least 1")
    if args.max_queued_per_address < 0:
        p.error("--max-queued-per-address takes a whole number of at least 0")
    return args


LOOPBACK = ("127.0.0.1", "localhost", "::1")
# The queue: at most CONCURRENCY model runs at once (all events that run a model share one group,
# guard.MODEL_EVENTS: they share 2-16 cores, and more at once only slows each), as many of each kind
# of redraw, and at most QUEUE_SIZE waiting, of which model runs may take half (app.guard); beyond
# that a visitor is told the server is busy instead of waiting minutes.
CONCURRENCY = 4
QUEUE_SIZE = 64
MAX_UPLOAD = "10mb"
# Each visitor's last Run (its trace: attention maps, logits, hidden states) stays in memory so that
# sliders redraw without the model. Gradio keeps a closed tab's state for an hour and up to 10,000
# sessions; this caps them, dropping the least recently used. Measured (bench.sessions): a built-in's
# Run of one sentence holds 0.07 MB, its longest (Mamba, 512 tokens) 11 MB, plus Gradio's ~6 MB copy
# of the page's last figures; a GPT-2-sized checkpoint's Run of 512 tokens 274 MB (12 x 12 maps of
# 512 x 512 and 512 x 50,257 logits, float32). Freed memory goes back to the system (app.memory).
MAX_SESSIONS = 100


def host_warning(host: str) -> str | None:
    """A warning when the server listens beyond this machine."""
    if host in LOOPBACK:
        return None
    return (f"archplay: listening on {host}: anyone who can reach this machine can use the page"
            " (and its CPU). Add --auth USER:PASSWORD to ask for a password.")


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("archplay: --device cuda was asked for, but torch sees no CUDA device")
    return device


def build_app(catalog: Catalog, lab_runs: lab.Lab | None = None) -> gr.Blocks:
    """The whole app as one Blocks; launch it with ``theme=THEME, css=CSS``. ``lab_runs``: where the Lab
    tab trains (default: a temporary folder, one run at a time)."""
    lab_runs = lab_runs or lab.Lab(catalog)
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        with gr.Tabs() as tabs:
            with gr.Tab("Explore", id="explore"):
                explore_ui = explore.build(catalog, demo)
            with gr.Tab("Logit lens", id="lens"):
                lens.build(catalog, explore_ui)
            with gr.Tab("Inside a step", id="steps"):
                steps.build(catalog, explore_ui)
            with gr.Tab("Interventions", id="ablate"):
                interventions.build(catalog, explore_ui)
            with gr.Tab("Anatomy", id="anatomy"):
                anatomy.build(catalog, explore_ui)
            with gr.Tab("Embeddings", id="embeddings") as embeddings_tab:
                embeddings_ui = embeddings.build(catalog, explore_ui)
            with gr.Tab("Compare", id="compare") as compare_tab:
                compare_ui = compare.build(catalog, demo)
            with gr.Tab("Architecture", id="architecture") as card_tab:
                card_ui = card.build(catalog, demo, explore_ui)
                scale_up = gr.Button("Scale this model up: what it costs at full size →", size="sm",
                                     elem_id="card-scale-up")  # fmt: skip
            with gr.Tab("Scale", id="scale") as scale_tab:
                scale_ui = scale.build(catalog)
            with gr.Tab("Lab", id="lab"):
                lab_ui = lab.build(catalog, lab_runs, [explore_ui.model, compare_ui.models, card_ui.model])

        # "Scale this model up": the card's model in the Scale tab's first column, larger ones of its family beside it.
        scale_up.click(lambda key: [*scale_ui.configure(key), gr.Tabs(selected="scale")], inputs=card_ui.model,
                       outputs=[*scale_ui.configure_outputs, tabs], api_name=False, show_progress="hidden")  # fmt: skip
        scale_tab.select(scale_ui.refresh, inputs=scale_ui.models, outputs=scale_ui.models, api_name=False,
                         show_progress="hidden")  # fmt: skip
        # "Scale this recipe up": the Lab's recipe as it is, its design at 1.3 B and 7 B, and a published model.
        lab_ui.scale_up.click(lambda text: [*scale_ui.configure_recipe(text), gr.Tabs(selected="scale")],
                              inputs=lab_ui.recipe, outputs=[*scale_ui.configure_outputs, tabs], api_name=False,
                              show_progress="hidden")  # fmt: skip

        # The catalog grows while the server runs (a page loads a checkpoint from --models-dir), but a
        # component's choices are fixed when the page is built: every model list is refreshed when a
        # page opens and when a tab with its own list is shown, so anyone's loaded model appears everywhere.
        def model_lists():
            everything = gr.update(choices=catalog.choices())
            return {explore_ui.model: everything, explore_ui.folder: gr.update(choices=catalog.folders()),
                    embeddings_ui.encoder: gr.update(choices=embeddings.encoder_choices(catalog)),
                    compare_ui.models: everything, card_ui.model: everything}  # fmt: skip

        gr.on(triggers=[demo.load, embeddings_tab.select, compare_tab.select, card_tab.select], fn=model_lists,
              outputs=[explore_ui.model, explore_ui.folder, embeddings_ui.encoder, compare_ui.models, card_ui.model],
              api_name=False, show_progress="hidden")  # fmt: skip
    return demo


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    memory.limit_arenas()  # before the worker threads allocate: they share a few malloc arenas
    device = resolve_device(args.device)
    print(f"archplay: loading models on {device}…", flush=True)
    catalog = Catalog.from_names(args.model, device=device, log=lambda m: print(m, file=sys.stderr, flush=True),
                                   models_dir=args.models_dir, allow_downloads=args.allow_downloads,
                                   dtype=None if args.dtype == "auto" else args.dtype,
                                   device_map=args.device_map)  # fmt: skip
    # A shared server (beyond loopback) loads Hugging Face ids on the page only when told to: each is memory.
    catalog.hub_ids = args.allow_downloads or args.host in LOOPBACK
    warning = host_warning(args.host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    for key in catalog.keys():
        print(f"archplay: offering {catalog.get(key).label}", flush=True)
    lab_runs = lab.Lab(catalog, args.lab_dir, max_running=args.lab_jobs, stories=args.lab_stories)
    demo = build_app(catalog, lab_runs)
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    guard.cap_queue(demo, total=QUEUE_SIZE, per_address=args.max_queued_per_address)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        sweeper = asyncio.create_task(guard.sweep_unheard(demo, also=memory.trim))  # trim: give freed memory back
        yield
        sweeper.cancel()

    _, local_url, _ = demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        auth=guard.make_auth(*args.auth.split(":", 1)) if args.auth else None,
        app_kwargs={"middleware": [Middleware(guard.Guard)], "lifespan": lifespan,
                    "exception_handlers": {FnIndexInferError: guard.not_found, KeyError: guard.not_found}},
        max_file_size=MAX_UPLOAD,
        state_session_capacity=args.max_sessions,
        prevent_thread_lock=True,
        quiet=True,
        ssr_mode=False,
        theme=THEME,
        css=CSS,
        js=explore.PAGE_JS,
    )
    print(f"archplay: serving on {local_url.rstrip('/')}  (Ctrl+C to stop)", flush=True)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        lab_runs.stop_all()  # a training run does not outlive the server
        demo.close()


if __name__ == "__main__":
    main()
