"""Train the built-in models on the synthetic story world: ``python -m archplay.models.training.train --model all``.

    python -m archplay.models.training.train --model gpt            # one model
    python -m archplay.models.training.train --model all            # all five, one after the other
    python -m archplay.models.training.train --model gpt --steps 50 --out /tmp/ckpt   # a short run elsewhere

Each model gets ``<out>/<name>/``: ``config.json`` (family, config, tokenizer wrapping, how it
was trained), ``model.safetensors`` and ``training.json`` (the loss curve). Everything is
seeded: the corpus, the tokenizer, the initial weights, the batches and the masks, so a
second run on the same machine writes the same numbers.

Objectives:

* gpt, moe, mamba: causal language modelling on the train split's stories, packed into one
  stream ``<s> story </s> <s> story </s> …`` and cut into random windows. The MoE adds
  Switch/Mixtral's load-balancing loss (``archplay.models.architectures.moe.load_balancing_loss``) so no expert dies.
* bert: masked language modelling on whole stories (``<cls> story <sep>``): 15% of the
  story's tokens are chosen; of those 80% become ``<mask>``, 10% a random token, 10% stay.
* t5: translation of each story sentence into the invented language (``archplay.models.story.translation``),
  teacher-forced, the decoder starting from ``<pad>``.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from archplay.models import registry, story
from archplay.models.architectures.decoder import DecoderConfig
from archplay.models.architectures.encoder import EncoderConfig
from archplay.models.architectures.encoder_decoder import EncoderDecoderConfig
from archplay.models.architectures.moe import MoEConfig, Router, load_balancing_loss
from archplay.models.architectures.ssm import MambaConfig, compiled_scan
from archplay.models.checkpoints.loading import BUILTIN_DIR, save_builtin
from archplay.models.story.tokenizer import SPTokenizer

IGNORE = -100  # label of positions that carry no loss
CONTEXT = 256  # every built-in reads up to this many tokens


# --------------------------------------------------------------------------- recipes


@dataclass
class Recipe:
    """How one built-in is made: its architecture, its tokenizer wrapping and its schedule.

    The objective is the family's (``registry.of(config).objective``): causal, masked or translation.
    """

    name: str
    make_config: Callable[[SPTokenizer], object]
    prefix: tuple[str, ...] = ()  # specials the tokenizer adds around every text
    suffix: tuple[str, ...] = ()
    steps: int = 1200
    batch_size: int = 16
    seq_len: int = 128  # window length for the causal objective
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.1
    aux_loss_coef: float = 0.0  # MoE load balancing
    eval_every: int = 100
    compile_scan: bool = False  # Mamba: train through ssm.compiled_scan() (~1.6x faster steps on CPU)
    extra: dict = field(default_factory=dict)


def _gpt_config(tok: SPTokenizer) -> DecoderConfig:
    """GPT-2 style: learned positions, LayerNorm, GELU, tied embeddings."""
    return DecoderConfig(
        vocab_size=tok.vocab_size, d_model=128, n_layer=4, n_head=4, d_ff=512, max_seq_len=CONTEXT,
        positions="learned", norm="layernorm", mlp="mlp", activation="gelu_new", tie_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, name="gpt",
    )  # fmt: skip


def _moe_config(tok: SPTokenizer) -> MoEConfig:
    """Mixtral style: RoPE, RMSNorm, grouped-query attention, 4 SwiGLU experts, top-2."""
    return MoEConfig(
        vocab_size=tok.vocab_size, d_model=128, n_layer=4, n_head=4, n_kv_head=2, d_ff=256,
        max_seq_len=CONTEXT, positions="rotary", norm="rmsnorm", norm_eps=1e-5, mlp="gated", activation="silu",
        qkv_bias=False, o_bias=False, mlp_bias=False, tie_embeddings=True, n_experts=4, top_k=2,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, name="moe",
    )  # fmt: skip


def _mamba_config(tok: SPTokenizer) -> MambaConfig:
    return MambaConfig(
        vocab_size=tok.vocab_size, d_model=128, n_layer=6, d_state=16,
        max_seq_len=2048,  # no positions to run out of: the page may offer long inputs (trained on 128-token windows)
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, name="mamba",
    )  # fmt: skip


def _bert_config(tok: SPTokenizer) -> EncoderConfig:
    return EncoderConfig(
        vocab_size=tok.vocab_size, d_model=128, n_layer=4, n_head=4, d_ff=512, max_seq_len=CONTEXT,
        pad_token_id=tok.pad_token_id, name="bert",
    )  # fmt: skip


def _t5_config(tok: SPTokenizer) -> EncoderDecoderConfig:
    """T5 v1.1 style (gated GELU, RMSNorm, relative position buckets), tied embeddings."""
    return EncoderDecoderConfig(
        vocab_size=tok.vocab_size, d_model=128, d_kv=32, d_ff=256, n_layer=3, n_decoder_layer=3, n_head=4,
        ffn="gated-gelu", tie_embeddings=True, scale_decoder_outputs=True, max_seq_len=CONTEXT,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id,
        name="t5",
    )  # fmt: skip


RECIPES: dict[str, Recipe] = {
    "gpt": Recipe("gpt", _gpt_config, prefix=("<s>",), steps=2000),
    "bert": Recipe("bert", _bert_config, prefix=("<cls>",), suffix=("<sep>",), steps=4000, lr=2e-3),
    "t5": Recipe("t5", _t5_config, suffix=("</s>",), steps=1200, batch_size=48),
    "moe": Recipe("moe", _moe_config, prefix=("<s>",), steps=1800, aux_loss_coef=0.02),
    "mamba": Recipe("mamba", _mamba_config, prefix=("<s>",), steps=1600, lr=5e-3, warmup=60,
                    compile_scan=True),
}


# --------------------------------------------------------------------------- data


def plain(tok: SPTokenizer) -> SPTokenizer:
    """The same vocabulary without the specials ``tok`` wraps every text in."""
    return SPTokenizer(tok.model_file)


def story_ids(tok: SPTokenizer, stories) -> list[list[int]]:
    """Each story's text as token ids, without the specials the tokenizer would wrap it in."""
    bare = plain(tok)
    return [bare.encode(s.text) for s in stories]


def causal_stream(tok: SPTokenizer, stories) -> Tensor:
    """``<s> story </s> <s> story </s> …`` as one long (N,) tensor."""
    out: list[int] = []
    for ids in story_ids(tok, stories):
        out += [tok.bos_token_id, *ids, tok.eos_token_id]
    return torch.tensor(out, dtype=torch.long)


def causal_batches(stream: Tensor, batch_size: int, seq_len: int, gen: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
    """Random windows of the stream: inputs (B, L) and their next tokens (B, L)."""
    while True:
        starts = torch.randint(0, len(stream) - seq_len - 1, (batch_size,), generator=gen)
        idx = starts[:, None] + torch.arange(seq_len + 1)  # (B, L + 1)
        window = stream[idx]
        yield window[:, :-1], window[:, 1:]


def pad_batch(rows: list[list[int]], pad: int, fill: int | None = None) -> Tensor:
    """Right-padded (B, T) tensor; ``fill`` (default ``pad``) goes into the padding."""
    T = max(len(r) for r in rows)
    fill = pad if fill is None else fill
    return torch.tensor([r + [fill] * (T - len(r)) for r in rows], dtype=torch.long)


def mask_tokens(ids: list[int], tok: SPTokenizer, rng: random.Random, rate: float = 0.15) -> tuple[list[int], list[int]]:
    """BERT's masking of one ``<cls> … <sep>`` row: (inputs, labels with IGNORE where unmasked)."""
    inputs, labels = list(ids), [IGNORE] * len(ids)
    candidates = list(range(1, len(ids) - 1))  # never the <cls> and <sep> around the story
    n = max(1, round(rate * len(candidates)))
    for i in rng.sample(candidates, min(n, len(candidates))):
        labels[i] = ids[i]
        roll = rng.random()
        if roll < 0.8:
            inputs[i] = tok.mask_token_id
        elif roll < 0.9:
            inputs[i] = ids[rng.randrange(1, len(ids) - 1)]  # a random token of the same story
    return inputs, labels


def mlm_batches(tok: SPTokenizer, stories, batch_size: int, seed: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    rows = [tok.encode(s.text)[:CONTEXT] for s in stories]
    rng = random.Random(seed)
    while True:
        chosen = [rows[rng.randrange(len(rows))] for _ in range(batch_size)]
        pairs = [mask_tokens(r, tok, rng) for r in chosen]
        inputs = pad_batch([p[0] for p in pairs], tok.pad_token_id)
        mask = pad_batch([[1] * len(p[0]) for p in pairs], 0)  # (B, T) 1 = a real token
        labels = pad_batch([p[1] for p in pairs], tok.pad_token_id, fill=IGNORE)
        yield inputs, mask, labels


def translation_rows(tok: SPTokenizer, pairs) -> list[tuple[list[int], list[int]]]:
    """(source ids ending in </s>, target ids ending in </s>) per sentence pair."""
    eos, bare = tok.eos_token_id, plain(tok)
    return [(bare.encode(p.source)[: CONTEXT - 1] + [eos], bare.encode(p.target)[: CONTEXT - 1] + [eos])
            for p in pairs]  # fmt: skip


def translation_batches(rows, pad: int, start: int, batch_size: int, seed: int):
    rng = random.Random(seed)
    while True:
        chosen = [rows[rng.randrange(len(rows))] for _ in range(batch_size)]
        yield translation_tensors(chosen, pad, start)


def translation_tensors(rows, pad: int, start: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """source (B, S), its mask (B, S), decoder inputs (B, T) = [start] + target[:-1], labels (B, T)."""
    src = pad_batch([r[0] for r in rows], pad)
    src_mask = pad_batch([[1] * len(r[0]) for r in rows], 0)
    dec = pad_batch([[start] + r[1][:-1] for r in rows], pad)
    labels = pad_batch([r[1] for r in rows], pad, fill=IGNORE)
    return src, src_mask, dec, labels


# --------------------------------------------------------------------------- losses


class RouterTap:
    """Collects every Router's logits during a forward pass (for the load-balancing loss)."""

    def __init__(self, model: nn.Module):
        self.logits: list[Tensor] = []
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules() if isinstance(m, Router)]

    def _hook(self, module, inputs, output) -> None:
        self.logits.append(output[0])  # (N, E)

    def take(self) -> list[Tensor]:
        out, self.logits = self.logits, []
        return out


def lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE)


def batch_loss(model: nn.Module, recipe: Recipe, batch, tap: RouterTap | None) -> tuple[Tensor, Tensor]:
    """(the loss to minimise, the language-model part of it) on one batch."""
    objective = registry.of(model).objective
    if objective == "causal":
        inputs, targets = batch
        loss = lm_loss(model(inputs).logits, targets)
    elif objective == "masked":
        inputs, mask, labels = batch
        loss = lm_loss(model(inputs, attention_mask=mask).logits, labels)
    else:
        src, src_mask, dec, labels = batch
        loss = lm_loss(model(src, decoder_input_ids=dec, attention_mask=src_mask).logits, labels)
    total = loss
    if tap is not None:
        cfg = model.config
        total = loss + recipe.aux_loss_coef * load_balancing_loss(tap.take(), cfg.n_experts, cfg.top_k)
    return total, loss


@torch.no_grad()
def validation_loss(model: nn.Module, recipe: Recipe, batches: list) -> float:
    """Mean language-model loss over fixed validation batches."""
    model.eval()
    losses = [float(batch_loss(model, recipe, b, None)[1]) for b in batches]
    model.train()
    return sum(losses) / len(losses)


# --------------------------------------------------------------------------- the loop


def lr_at(step: int, recipe: Recipe) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def optimizer_for(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not on norms, biases or the A_log / D of the SSM)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "A_log" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.95))


def data_for(recipe: Recipe, objective: str, tok: SPTokenizer, splits: dict, seed: int) -> tuple[Iterator, list]:
    """(endless training batches, a fixed list of validation batches) for the family's ``objective``."""
    gen = torch.Generator().manual_seed(seed)
    if objective == "causal":
        train = causal_batches(causal_stream(tok, splits["train"]), recipe.batch_size, recipe.seq_len, gen)
        valid_gen = causal_batches(causal_stream(tok, splits["validation"]), recipe.batch_size, recipe.seq_len,
                                   torch.Generator().manual_seed(seed + 1))  # fmt: skip
    elif objective == "masked":
        train = mlm_batches(tok, splits["train"], recipe.batch_size, seed)
        valid_gen = mlm_batches(tok, splits["validation"], recipe.batch_size, seed + 1)
    else:
        pad = tok.pad_token_id
        train = translation_batches(translation_rows(tok, story.translation_pairs(splits["train"])), pad, pad,
                                    recipe.batch_size, seed)  # fmt: skip
        valid_gen = translation_batches(translation_rows(tok, story.translation_pairs(splits["validation"])), pad,
                                        pad, recipe.batch_size, seed + 1)  # fmt: skip
    return train, [next(valid_gen) for _ in range(8)]


def train(recipe: Recipe, *, splits: dict | None = None, steps: int | None = None, seed: int = 0,
          log: Callable[[str], None] | None = None, tty_progress: bool = False, compile_scan: bool | None = None,
          ) -> tuple[nn.Module, SPTokenizer, dict]:  # fmt: skip
    """Train one built-in from scratch; returns (model, tokenizer, training record).

    ``log`` gets a progress line at every validation (every step with ``tty_progress``).
    ``compile_scan`` (None: the recipe's choice) trains a Mamba through the compiled scan."""
    if steps is not None:
        recipe = Recipe(**{**asdict(recipe), "steps": steps, "warmup": min(recipe.warmup, max(1, steps // 5)),
                           "make_config": recipe.make_config})  # fmt: skip
    splits = splits if splits is not None else story.make_splits(seed=0)
    tok = SPTokenizer.builtin(prefix=recipe.prefix, suffix=recipe.suffix)
    torch.manual_seed(seed)
    cfg = recipe.make_config(tok)
    family = registry.of(cfg)
    model = family.build(cfg).train()
    compiled = recipe.compile_scan if compile_scan is None else compile_scan
    if compiled:
        model.use_scan(compiled_scan())
    train_batches, valid_batches = data_for(recipe, family.objective, tok, splits, seed)
    opt = optimizer_for(model, recipe)
    tap = RouterTap(model) if recipe.aux_loss_coef else None

    curve = {"step": [], "train_loss": [], "validation_step": [], "validation_loss": []}
    started = time.perf_counter()
    for step in range(recipe.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, recipe)
        total, loss = batch_loss(model, recipe, next(train_batches), tap)
        opt.zero_grad(set_to_none=True)
        total.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        curve["step"].append(step + 1)
        curve["train_loss"].append(round(float(loss.detach()), 5))
        last = step + 1 == recipe.steps
        if (step + 1) % recipe.eval_every == 0 or last:
            curve["validation_step"].append(step + 1)
            curve["validation_loss"].append(round(validation_loss(model, recipe, valid_batches), 5))
        if log and (tty_progress or (step + 1) % recipe.eval_every == 0 or last):
            loss_now = curve["train_loss"][-1]
            log(_progress(recipe.name, step + 1, recipe.steps, loss_now, curve, time.perf_counter() - started))
    if tap is not None:
        for h in tap.handles:
            h.remove()
    if compiled:
        model.use_scan(None)  # the model leaves training with the plain scan
    record = {
        "objective": family.objective, "steps": recipe.steps, "batch_size": recipe.batch_size,
        "seq_len": recipe.seq_len, "lr": recipe.lr, "seed": seed, "seconds": round(time.perf_counter() - started, 1),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "compiled_scan": bool(compiled),
        "curve": curve,
    }  # fmt: skip
    return model.eval(), tok, record


def _progress(name: str, step: int, steps: int, loss: float, curve: dict, elapsed: float) -> str:
    width = 24
    done = int(width * step / steps)
    val = f" val {curve['validation_loss'][-1]:.3f}" if curve["validation_loss"] else ""
    eta = elapsed / step * (steps - step)
    return f"{name:>5} [{'#' * done}{'.' * (width - done)}] {step}/{steps} loss {loss:.3f}{val}  {elapsed:.0f}s (~{eta:.0f}s left)"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m archplay.models.training.train", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, choices=[*RECIPES, "all"])
    p.add_argument("--steps", type=int, default=None, help="override the recipe's number of steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=BUILTIN_DIR, help=f"where checkpoints go (default: {BUILTIN_DIR})")
    p.add_argument("--no-compile", action="store_true",
                   help="train Mamba with the eager scan (slower; for machines without a C++ compiler)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = list(RECIPES) if args.model == "all" else [args.model]
    tty = sys.stderr.isatty()

    def log(line: str) -> None:
        print("\r" + line if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    print("building the corpus…", file=sys.stderr, flush=True)
    splits = story.make_splits(seed=0)
    for name in names:
        model, tok, record = train(RECIPES[name], splits=splits, steps=args.steps, seed=args.seed, log=log,
                                   tty_progress=tty, compile_scan=False if args.no_compile else None)
        folder = save_builtin(model, tok, args.out / name, training=record)
        if tty:
            print(file=sys.stderr)
        curve = record["curve"]
        print(f"{name}: {record['steps']} steps in {record['seconds']:.0f} s, train loss {curve['train_loss'][-1]:.3f}, "
              f"validation loss {curve['validation_loss'][-1]:.3f} -> {folder}", flush=True)  # fmt: skip
    print(f"done in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
