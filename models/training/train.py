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

One loop (``fit``) trains every model, the built-ins here and a user's recipe through
``archplay-train`` (``archplay.models.training.cli``): AdamW, linear warm-up then cosine decay,
gradient clipping at 1. Data-parallel as in nanoGPT: under ``torchrun`` (``RANK`` /
``WORLD_SIZE`` / ``LOCAL_RANK``) each process draws the same global batch, runs its own slice of
the rows, and the loss is normalised by the global number of target tokens, so any number of
processes computes the same loss and gradient; rank 0 logs and saves.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
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


# --------------------------------------------------------------------------- schedules


@dataclass
class Schedule:
    """How one model is made: its architecture, its tokenizer wrapping and its training schedule.

    The built-ins' are in ``RECIPES``; a user's JSON recipe (``archplay.models.training.recipe``)
    compiles to one (``Recipe.schedule()``). The objective is the family's
    (``registry.of(config).objective``): causal, masked or translation.
    """

    name: str
    make_config: Callable[[SPTokenizer], object]
    prefix: tuple[str, ...] = ()  # specials the tokenizer adds around every text
    suffix: tuple[str, ...] = ()
    steps: int = 1200
    batch_size: int = 16
    seq_len: int = 128  # window length for the causal objective; the longest row of the others
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.1
    aux_loss_coef: float = 0.0  # MoE load balancing
    eval_every: int = 100
    compile_scan: bool = False  # Mamba: train through ssm.compiled_scan() (~1.6x faster steps on CPU)
    extra: dict = field(default_factory=dict)
    then: Schedule | None = None  # a second phase, continuing from the first's weights (gpt: longer windows)


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


Recipe = Schedule  # the name this table's entries had before the JSON recipes (recipe.py) arrived

RECIPES: dict[str, Schedule] = {
    # gpt reads positions from a learned table of CONTEXT rows: after 128-token windows (rows 128-255
    # untrained: a long text's predictions collapsed), 400 steps on windows of the whole table.
    "gpt": Schedule("gpt", _gpt_config, prefix=("<s>",), steps=2000,
                    then=Schedule("gpt", _gpt_config, prefix=("<s>",), steps=400, batch_size=8, seq_len=CONTEXT,
                                  lr=1e-3, warmup=40)),
    "bert": Schedule("bert", _bert_config, prefix=("<cls>",), suffix=("<sep>",), steps=4000, lr=2e-3),
    "t5": Schedule("t5", _t5_config, suffix=("</s>",), steps=1200, batch_size=48),
    "moe": Schedule("moe", _moe_config, prefix=("<s>",), steps=1800, aux_loss_coef=0.02),
    "mamba": Schedule("mamba", _mamba_config, prefix=("<s>",), steps=1600, lr=5e-3, warmup=60,
                      compile_scan=True),
}


def with_steps(schedule: Schedule, steps: int) -> Schedule:
    """The same schedule, shortened (or lengthened) to ``steps``; the warm-up at most a fifth of it."""
    return replace(schedule, steps=steps, warmup=min(schedule.warmup, max(1, steps // 5)))


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


def mlm_batches(tok: SPTokenizer, stories, batch_size: int, seed: int, max_len: int = CONTEXT,
                ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:  # fmt: skip
    """Masked rows ``<cls> story <sep>`` (cut at ``max_len``): inputs (B, T), attention mask (B, T), labels (B, T)."""
    rows = [tok.encode(s.text)[:max_len] for s in stories]
    rng = random.Random(seed)
    while True:
        chosen = [rows[rng.randrange(len(rows))] for _ in range(batch_size)]
        pairs = [mask_tokens(r, tok, rng) for r in chosen]
        inputs = pad_batch([p[0] for p in pairs], tok.pad_token_id)
        mask = pad_batch([[1] * len(p[0]) for p in pairs], 0)  # (B, T) 1 = a real token
        labels = pad_batch([p[1] for p in pairs], tok.pad_token_id, fill=IGNORE)
        yield inputs, mask, labels


def translation_rows(tok: SPTokenizer, pairs, max_len: int = CONTEXT) -> list[tuple[list[int], list[int]]]:
    """(source ids ending in </s>, target ids ending in </s>) per sentence pair, each at most ``max_len``."""
    eos, bare = tok.eos_token_id, plain(tok)
    return [(bare.encode(p.source)[: max_len - 1] + [eos], bare.encode(p.target)[: max_len - 1] + [eos])
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


def lm_loss(logits: Tensor, labels: Tensor, count: int | None = None) -> Tensor:
    """Cross-entropy over the labelled positions: their mean, or their sum over ``count``
    (the global number of labelled positions, when this batch is one process's slice)."""
    flat, targets = logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1)
    if count is None:
        return F.cross_entropy(flat, targets, ignore_index=IGNORE)
    return F.cross_entropy(flat, targets, ignore_index=IGNORE, reduction="sum") / count


def target_count(batch) -> int:
    """How many positions of ``batch`` carry a loss (the labels are a batch's last tensor, whatever the objective)."""
    return int((batch[-1] != IGNORE).sum())


def token_count(batch, objective: str) -> int:
    """Real (non-padding) tokens a batch feeds the model: what tokens per second counts."""
    if objective == "causal":
        return batch[0].numel()
    if objective == "masked":
        return int(batch[1].sum())
    return int(batch[1].sum()) + target_count(batch)  # source tokens and decoder tokens


def lm_forward(model: nn.Module, objective: str, batch, count: int | None = None) -> Tensor:
    """The language-model loss of one batch of the ``objective`` (see ``lm_loss`` for ``count``)."""
    if objective == "causal":
        inputs, targets = batch
        return lm_loss(model(inputs).logits, targets, count)
    if objective == "masked":
        inputs, mask, labels = batch
        return lm_loss(model(inputs, attention_mask=mask).logits, labels, count)
    src, src_mask, dec, labels = batch
    return lm_loss(model(src, decoder_input_ids=dec, attention_mask=src_mask).logits, labels, count)


def batch_loss(model: nn.Module, recipe: Schedule, batch, tap: RouterTap | None) -> tuple[Tensor, Tensor]:
    """(the loss to minimise, the language-model part of it) on one batch."""
    loss = lm_forward(model, registry.of(model).objective, batch)
    return loss + aux_loss(model.config, recipe, tap), loss


def aux_loss(cfg, schedule: Schedule, tap: RouterTap | None) -> Tensor | float:
    """The MoE load-balancing term (0 without a tap): Switch's loss over the routers' logits just seen."""
    if tap is None:
        return 0.0
    return schedule.aux_loss_coef * load_balancing_loss(tap.take(), cfg.n_experts, cfg.top_k)


def aux_loss_share(cfg, schedule: Schedule, tap: RouterTap | None) -> Tensor | float:
    """This process's share of the load-balancing loss of the global batch (the shares sum to it).

    Switch's loss E · Σ_e f_e · P_e is not a sum over tokens: f_e (the share of routed slots) and
    the token count are gathered from every process first (no gradient flows through f, as in
    ``load_balancing_loss``); P_e's sum over this process's tokens then carries its gradient."""
    if tap is None:
        return 0.0
    E, k = cfg.n_experts, cfg.top_k
    logits = torch.cat([t.reshape(-1, E) for t in tap.take()]).float()  # (layers · N, E)
    probs = torch.softmax(logits, dim=-1)
    chosen = torch.topk(probs, k, dim=-1).indices  # (layers · N, k)
    stats = torch.zeros(E + 1, device=logits.device)
    stats[:E].scatter_add_(0, chosen.reshape(-1), torch.ones(chosen.numel(), device=logits.device))
    stats[E] = logits.shape[0]
    torch.distributed.all_reduce(stats)  # slots per expert, and rows, over the world
    f = stats[:E] / stats[E]  # (E,)
    return schedule.aux_loss_coef * E * (f * probs.sum(0)).sum() / stats[E]


@torch.no_grad()
def validation_loss(model: nn.Module, recipe: Schedule, batches: list, device: torch.device | str = "cpu") -> float:
    """Mean language-model loss over fixed validation batches."""
    model.eval()
    objective = registry.of(model).objective
    losses = [float(lm_forward(model, objective, [t.to(device) for t in b])) for b in batches]
    model.train()
    return sum(losses) / len(losses)


# --------------------------------------------------------------------------- the loop


def lr_at(step: int, recipe: Schedule) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def optimizer_for(model: nn.Module, recipe: Schedule) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not on norms, biases or the A_log / D of the SSM)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "A_log" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.95))


def data_for(recipe: Schedule, objective: str, tok: SPTokenizer, splits: dict, seed: int) -> tuple[Iterator, list]:
    """(endless training batches, a fixed list of validation batches) for the family's ``objective``."""
    gen = torch.Generator().manual_seed(seed)
    B, L = recipe.batch_size, recipe.seq_len
    if objective == "causal":
        train = causal_batches(causal_stream(tok, splits["train"]), B, L, gen)
        valid_gen = causal_batches(causal_stream(tok, splits["validation"]), B, L, torch.Generator().manual_seed(seed + 1))
    elif objective == "masked":
        train = mlm_batches(tok, splits["train"], B, seed, max_len=L)
        valid_gen = mlm_batches(tok, splits["validation"], B, seed + 1, max_len=L)
    else:
        pad = tok.pad_token_id
        rows = {k: translation_rows(tok, story.translation_pairs(splits[k]), max_len=L) for k in ("train", "validation")}
        train = translation_batches(rows["train"], pad, pad, B, seed)
        valid_gen = translation_batches(rows["validation"], pad, pad, B, seed + 1)
    return train, [next(valid_gen) for _ in range(8)]


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel run, from torchrun's environment variables.

    ``size`` 1 (no ``WORLD_SIZE``): a plain single-process run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> World:
        env = os.environ
        if "WORLD_SIZE" not in env:
            return cls()
        return cls(int(env.get("RANK", 0)), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))

    @property
    def main(self) -> bool:
        """Rank 0: the process that logs and saves."""
        return self.rank == 0

    def shard(self, batch) -> list[Tensor]:
        """This rank's rows of a global batch (contiguous slices; sizes differ by at most one)."""
        return [torch.tensor_split(t, self.size)[self.rank] for t in batch]


def build(schedule: Schedule, seed: int = 0) -> tuple[nn.Module, SPTokenizer]:
    """A freshly initialised model of ``schedule`` (seeded) and its tokenizer."""
    tok = SPTokenizer.builtin(prefix=schedule.prefix, suffix=schedule.suffix)
    torch.manual_seed(seed)
    cfg = schedule.make_config(tok)
    return registry.of(cfg).build(cfg).train(), tok


def train(recipe: Schedule, *, splits: dict | None = None, steps: int | None = None, seed: int = 0,
          log: Callable[[str], None] | None = None, tty_progress: bool = False, compile_scan: bool | None = None,
          ) -> tuple[nn.Module, SPTokenizer, dict]:  # fmt: skip
    """Train one built-in from scratch; returns (model, tokenizer, training record).

    ``log`` gets a progress line at every validation (every step with ``tty_progress``).
    ``compile_scan`` (None: the recipe's choice) trains a Mamba through the compiled scan."""
    if steps is not None:
        recipe = with_steps(recipe, steps)
    splits = splits if splits is not None else story.make_splits(seed=0)
    model, tok = build(recipe, seed)
    compiled = recipe.compile_scan if compile_scan is None else compile_scan
    last_val: float | None = None

    def on_step(p: dict) -> None:
        nonlocal last_val
        last_val = p.get("validation_loss", last_val)
        if log and (tty_progress or "validation_loss" in p):
            log(_progress(recipe.name, p["step"], p["steps"], p["loss"], last_val, p["elapsed_s"], p["tokens_per_s"]))

    record = fit(model, tok, recipe, splits, seed=seed, on_step=on_step, compile_scan=compiled)
    if recipe.then is not None and steps is None:  # a short run (``steps``) is the first phase only
        later = fit(model, tok, recipe.then, splits, seed=seed, on_step=on_step, compile_scan=compiled)
        record = {**record, "then": later}
    return model.eval(), tok, record


def fit(model: nn.Module, tok: SPTokenizer, schedule: Schedule, splits: dict, *, seed: int = 0,
        world: World = World(), device: torch.device | str = "cpu", compile_scan: bool = False,
        on_step: Callable[[dict], None] | None = None) -> dict:  # fmt: skip
    """The training loop: train ``model`` (in place) on ``schedule``; returns the training record.

    Every process of a ``world`` draws the same global batch and runs its slice of the rows
    (``World.shard``) through ``DistributedDataParallel`` (the process group must be set up);
    the loss is the sum over the slice's target tokens divided by the global count, times the
    world size, so that DDP's gradient average is the gradient of the global mean; the MoE
    load-balancing term too is the global batch's (``aux_loss_share``).
    ``on_step`` (rank 0 only) gets ``{"step", "steps", "loss", "tokens_per_s", "elapsed_s",
    "eta_s"}`` after each step, plus ``"validation_loss"`` on the steps that measure it."""
    objective = registry.of(model).objective
    model.to(device).train()
    if compile_scan:
        model.use_scan(compiled_scan())
    train_batches, valid_batches = data_for(schedule, objective, tok, splits, seed)
    opt = optimizer_for(model, schedule)
    tap = RouterTap(model) if schedule.aux_loss_coef else None
    net = model
    if world.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        routed = tap is not None or any(isinstance(m, Router) for m in model.modules())
        ids = [torch.device(device).index] if torch.device(device).type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=routed)  # an expert may get no token

    curve = {"step": [], "train_loss": [], "validation_step": [], "validation_loss": []}
    losses: list[float] = []
    tokens, validating = 0, 0.0  # tokens trained on; seconds spent measuring the validation loss
    started = time.perf_counter()
    for step in range(schedule.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, schedule)
        batch = next(train_batches)  # the global batch: the same on every rank
        tokens += token_count(batch, objective)
        if world.size == 1:
            loss = lm_forward(net, objective, [t.to(device) for t in batch])  # the mean over target tokens
            total = loss + aux_loss(model.config, schedule, tap)
        else:
            local = [t.to(device) for t in world.shard(batch)]
            share = lm_forward(net, objective, local, target_count(batch))  # this slice's part of the global mean
            total = (share + aux_loss_share(model.config, schedule, tap)) * world.size  # DDP averages over the world
            loss = share.detach().clone()
            torch.distributed.all_reduce(loss)  # the global mean, for the record
        opt.zero_grad(set_to_none=True)
        total.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if not world.main:
            continue
        losses.append(float(loss.detach()))
        curve["step"].append(step + 1)
        curve["train_loss"].append(round(losses[-1], 5))
        if (step + 1) % schedule.eval_every == 0 or step + 1 == schedule.steps:
            t0 = time.perf_counter()
            curve["validation_step"].append(step + 1)
            curve["validation_loss"].append(round(validation_loss(model, schedule, valid_batches, device), 5))
            validating += time.perf_counter() - t0
        elapsed = time.perf_counter() - started
        progress = {"step": step + 1, "steps": schedule.steps, "loss": losses[-1],
                    "tokens_per_s": round(tokens / max(elapsed - validating, 1e-9), 1), "elapsed_s": round(elapsed, 3),
                    "eta_s": round(elapsed / (step + 1) * (schedule.steps - step - 1), 3)}  # fmt: skip
        if curve["validation_step"] and curve["validation_step"][-1] == step + 1:
            progress["validation_loss"] = curve["validation_loss"][-1]
        if on_step is not None:
            on_step(progress)
    if tap is not None:
        for h in tap.handles:
            h.remove()
    if compile_scan:
        model.use_scan(None)  # the model leaves training with the plain scan
    seconds = time.perf_counter() - started
    return {
        "objective": objective, "steps": schedule.steps, "batch_size": schedule.batch_size,
        "seq_len": schedule.seq_len, "lr": schedule.lr, "seed": seed, "seconds": round(seconds, 1),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "compiled_scan": bool(compile_scan),
        "world_size": world.size, "tokens": tokens, "tokens_per_s": round(tokens / max(seconds - validating, 1e-9), 1),
        "losses": losses, "validation": {"step": curve["validation_step"], "loss": curve["validation_loss"]},
        "curve": curve,
    }  # fmt: skip


def _progress(name: str, step: int, steps: int, loss: float, val: float | None, elapsed: float,
              tokens_per_s: float | None = None) -> str:  # fmt: skip
    """One progress-bar line: ``gpt [#####.....] 120/2000 loss 3.210 val 3.300  9000 tok/s  12s (~180s left)``."""
    width = 24
    done = int(width * step / steps)
    val_s = f" val {val:.3f}" if val is not None else ""
    speed = f"  {tokens_per_s:,.0f} tok/s" if tokens_per_s is not None else ""
    eta = elapsed / step * (steps - step)
    return (f"{name:>5} [{'#' * done}{'.' * (width - done)}] {step}/{steps} loss {loss:.3f}{val_s}{speed}"
            f"  {elapsed:.0f}s (~{eta:.0f}s left)")  # fmt: skip


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
