"""Command line and composition: ``archplay [--host H] [--port P] [--model NAME_OR_FOLDER]... [--device D]``."""

from __future__ import annotations

import argparse
import sys

import gradio as gr
import torch

from . import card, compare, embeddings, explore, lens
from .registry import Registry

TITLE = "archplay"
THEME = gr.themes.Default(primary_hue="blue", secondary_hue="slate", neutral_hue="slate")
CSS = explore.CSS


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
        metavar="NAME_OR_FOLDER",
        help="a built-in name or a local Hugging Face checkpoint folder to offer; repeatable. "
        "Built-ins are always offered.",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where models run; auto = cuda when available (default: auto)")  # fmt: skip
    return p.parse_args(argv)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("archplay: --device cuda was asked for, but torch sees no CUDA device")
    return device


def build_app(registry: Registry) -> gr.Blocks:
    """The whole app as one Blocks; launch it with ``theme=THEME, css=CSS``."""
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        with gr.Tabs():
            with gr.Tab("Explore", id="explore"):
                explore_ui = explore.build(registry, demo)
            with gr.Tab("Logit lens", id="lens"):
                lens.build(registry, explore_ui)
            with gr.Tab("Embeddings", id="embeddings"):
                embeddings.build(registry, explore_ui)
            with gr.Tab("Compare", id="compare"):
                compare.build(registry, demo)
            with gr.Tab("Architecture", id="architecture"):
                card.build(registry, demo, explore_ui)
    return demo


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    print(f"archplay: loading models on {device}…", flush=True)
    registry = Registry.from_names(args.model, device=device, log=lambda m: print(m, file=sys.stderr, flush=True))
    for key in registry.keys():
        print(f"archplay: offering {registry.get(key).label}", flush=True)
    demo = build_app(registry)
    demo.queue(default_concurrency_limit=4)
    _, local_url, _ = demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=False,
        prevent_thread_lock=True,
        quiet=True,
        ssr_mode=False,
        theme=THEME,
        css=CSS,
    )
    print(f"archplay: serving on {local_url.rstrip('/')}  (Ctrl+C to stop)", flush=True)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()


if __name__ == "__main__":
    main()
