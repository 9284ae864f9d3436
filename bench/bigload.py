"""Loading big checkpoints: time and peak memory against transformers, and bf16 generation on the CPU.

    python -m bench.bigload [--quick] [--keep DIR]

Each case writes a random checkpoint (transformers' model classes, weights N(0, 0.02), saved with
``save_pretrained`` and a small word tokenizer) into a temporary folder:

* ``gpt2-124m``: GPT-2's own config (124 M parameters), fp32, one ``model.safetensors``;
* ``llama-1b``: Llama 3.2 1B's shapes (16 layers, width 2,048, 32 heads / 8 kv heads, MLP 8,192,
  vocabulary 128,256, tied embeddings: 1.24 B parameters), bf16, sharded (``max_shard_size="1GB"``).

Then, in a fresh process per measurement (ours, transformers', alternating): the libraries imported
and a tiny checkpoint loaded first (lazy imports, the meta device's kernels, the tokenizer library:
set-up either side pays once per process), freed memory handed back (``malloc_trim``), then the load
of the model and its tokenizer in the checkpoint's own dtype (``archplay.models.load`` against
``AutoModelForCausalLM.from_pretrained(dtype="auto")`` + ``AutoTokenizer``) and one forward pass of 8
tokens (transformers maps the file and reads it at first use; the forward makes both sides hold
their weights), three times each (``--quick``: twice). Reported, from each side's fastest load: seconds
to load, the ratio ours / transformers (goal ≤ 1.0), and the resident peak over the load and the forward (``VmHWM``, minus the resident size before) against the
weights' size (goal ≤ 1.2 ×), for both.

Generation (``llama-1b`` in bf16; ``--quick``: ``gpt2-124m`` in bf16): both models in this process,
greedy, a seeded 16-token prompt, end-of-sequence off, one warm-up of 2 tokens each, then the best of
5 runs, alternating (a step is ~98% matrix products both sides share: the two are at parity and single
runs differ by ±2%); tokens/s (new tokens over the whole ``generate`` call) and whether the tokens are the same
(random weights give small margins: a bf16 rounding difference can flip a near tie, reported as the
first position that differs). Run it on an idle machine: the loads are memory-bandwidth bound and
generation of the 1 B model on 2 cores takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SECTION = "big checkpoints"
ROOT = Path(__file__).resolve().parents[1]
TIME_TARGET = 1.0
PEAK_TARGET = 1.2
PROMPT_LEN = 16
WORDS = (
    "the a cat dog sat on mat red ball mia tom has big small ran to park she he it and "
    "saw blue green box tree house happy sad went home was is with her his they then"
).split()


def _word_tokenizer():
    import transformers as T
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.WordPiece()
    return T.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                     eos_token="</s>")  # fmt: skip


def _config(case: str):
    import transformers as T

    if case == "gpt2-124m":
        return T.GPT2Config(bos_token_id=None, eos_token_id=None), torch.float32, None
    if case == "llama-1b":
        return T.LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                             num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=8192,
                             tie_word_embeddings=True, rope_theta=500000.0, bos_token_id=None,
                             eos_token_id=None), torch.bfloat16, "1GB"  # fmt: skip
    if case == "tiny":
        return T.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=99, bos_token_id=None, eos_token_id=None), torch.float32, None  # fmt: skip
    raise ValueError(case)


def write_checkpoint(case: str, folder: Path) -> Path:
    """A random ``case`` checkpoint in ``folder`` (built on the meta device, then filled: no second copy)."""
    import transformers as T

    cfg, dtype, shard = _config(case)
    with torch.device("meta"):
        model = T.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model = model.to_empty(device="cpu")
    model.tie_weights()  # to_empty gave the tied head its own (uninitialised) storage
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 0.02, generator=gen)
            elif name.endswith("weight"):  # norm scales
                p.fill_(1.0)
            else:  # biases
                p.zero_()
    model.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
    _word_tokenizer().save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------- one load, in a fresh process

LOAD_SCRIPT = r"""
import ctypes, json, sys, time
import torch
side, folder, tiny = sys.argv[1:4]
if side == "ours":
    from archplay.models import load
    def run(path):
        return load(path)[0]
else:
    import transformers as T
    def run(path):
        T.AutoTokenizer.from_pretrained(path)
        return T.AutoModelForCausalLM.from_pretrained(path, dtype="auto").eval()
run(tiny)
ctypes.CDLL("libc.so.6").malloc_trim(0)
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
base = status("VmRSS")
t0 = time.perf_counter()
model = run(folder)
loaded = time.perf_counter() - t0
with torch.inference_mode():
    model(torch.arange(8)[None] + 4)
first = time.perf_counter() - t0
params = {id(p): p for p in model.parameters()}.values()
print(json.dumps({"load_s": loaded, "load_forward_s": first, "base": base, "peak": status("VmHWM"),
                  "weights": sum(p.numel() * p.element_size() for p in params),
                  "dtype": str(next(iter(params)).dtype)}))
"""


def measure_load(side: str, folder: Path, tiny: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, side, str(folder), str(tiny)], capture_output=True,
                         text=True, cwd=ROOT, timeout=900)  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"{side} load failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def load_rows(case: str, folder: Path, tiny: Path, repeats: int) -> list[dict]:
    runs = {"ours": [], "transformers": []}
    for _ in range(repeats):  # alternating, so that background load hits both alike
        for side in runs:
            runs[side].append(measure_load(side, folder, tiny))
    best = {side: min(r, key=lambda x: x["load_s"]) for side, r in runs.items()}
    ours, theirs = best["ours"], best["transformers"]
    ratio = ours["load_s"] / theirs["load_s"]
    peaks = {side: (r["peak"] - r["base"]) / r["weights"] for side, r in best.items()}
    gb = ours["weights"] / 1e9
    rows = [
        {"section": SECTION, "case": f"{case} ({gb:.2f} GB of {ours['dtype'].removeprefix('torch.')} weights)",
         "measure": "load seconds (model + tokenizer), ours vs transformers from_pretrained",
         "value": f"{ours['load_s']:.2f} s vs {theirs['load_s']:.2f} s = {ratio:.2f}× (with a first forward: "
                  f"{ours['load_forward_s']:.2f} vs {theirs['load_forward_s']:.2f} s)",
         "target": f"≤ {TIME_TARGET:.1f}×", "met": ratio <= TIME_TARGET, "raw": runs},
        {"section": SECTION, "case": f"{case} ({gb:.2f} GB of {ours['dtype'].removeprefix('torch.')} weights)",
         "measure": "resident peak over load + first forward / weights' size, ours vs transformers",
         "value": f"{peaks['ours']:.2f}× vs {peaks['transformers']:.2f}× "
                  f"(+{(ours['peak'] - ours['base']) / 1e9:.2f} GB vs +{(theirs['peak'] - theirs['base']) / 1e9:.2f} GB)",
         "target": f"≤ {PEAK_TARGET:.1f}×", "met": peaks["ours"] <= PEAK_TARGET},
    ]  # fmt: skip
    return rows


# --------------------------------------------------------------------------- generation


def generation_row(case: str, folder: Path, new_tokens: int, repeats: int = 5) -> dict:
    import transformers as T

    from archplay.models import load

    ours, _ = load(str(folder), dtype="bf16")
    theirs = T.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    gen = torch.Generator().manual_seed(0)
    vocab = theirs.config.vocab_size
    prompt = torch.randint(4, min(vocab, 1000), (1, PROMPT_LEN), generator=gen)
    theirs.generation_config.eos_token_id = None
    theirs.generation_config.pad_token_id = 0

    def run_ours(n):
        return ours.generate(prompt, max_new_tokens=n, temperature=0.0)

    def run_theirs(n):
        return theirs.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    speeds, tokens = {"ours": [], "transformers": []}, {}
    with torch.inference_mode():
        run_ours(2), run_theirs(2)
        for _ in range(repeats):
            for side, fn in (("ours", run_ours), ("transformers", run_theirs)):
                t0 = time.perf_counter()
                out = fn(new_tokens)
                speeds[side].append(new_tokens / (time.perf_counter() - t0))
                tokens[side] = out[0, PROMPT_LEN:].tolist()
    a, b = tokens["ours"], tokens["transformers"]
    same = a == b
    differ = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    best = {side: max(v) for side, v in speeds.items()}
    ratio = best["ours"] / best["transformers"]
    return {
        "section": SECTION, "case": f"{case}, bf16, CPU, greedy {new_tokens} new tokens",
        "measure": "tokens/s, ours vs transformers (same tokens?)",
        "value": f"{best['ours']:.2f} vs {best['transformers']:.2f} tok/s = {ratio:.2f}×; tokens "
                 + ("identical" if same else f"differ from new token {differ}"),
        "target": "≥ 1.0×, same tokens", "met": ratio >= 1.0 and same,
        "raw": {"speeds": speeds, "tokens": tokens, "threads": torch.get_num_threads()},
    }  # fmt: skip


def run(quick: bool = False, device: str = "cpu", keep: Path | None = None) -> list[dict]:
    if device != "cpu":
        print("bench.bigload measures CPU loads only; running on the CPU", file=sys.stderr)
    cases = ["gpt2-124m"] if quick else ["gpt2-124m", "llama-1b"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = keep or Path(tmp)
        tiny = base / "tiny"
        if not (tiny / "config.json").is_file():
            write_checkpoint("tiny", tiny)
        for case in cases:
            folder = base / case
            if not (folder / "config.json").is_file():
                t0 = time.perf_counter()
                write_checkpoint(case, folder)
                print(f"wrote {case} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            rows += load_rows(case, folder, tiny, repeats=2 if quick else 3)
            print(rows[-2]["value"], "|", rows[-1]["value"], file=sys.stderr, flush=True)
        gen_case = "gpt2-124m" if quick else "llama-1b"
        rows.append(generation_row(gen_case, base / gen_case, new_tokens=8 if quick else 16))
    return rows


def main(argv: list[str] | None = None) -> None:
    from bench.report import print_table

    ap = argparse.ArgumentParser(prog="python -m bench.bigload", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="GPT-2 124M only, 8 new tokens")
    ap.add_argument("--keep", type=Path, help="write (or reuse) the checkpoints in this folder")
    ap.add_argument("--json", type=Path, help="also write the rows (with raw numbers) here")
    args = ap.parse_args(argv)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    print(f"loadavg {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores, torch {torch.__version__}", flush=True)
    rows = run(quick=args.quick, keep=args.keep)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
