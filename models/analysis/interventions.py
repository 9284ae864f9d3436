"""Interventions: switch parts of a model off and see what its prediction does without them.

``ablate`` runs the model as usual with some of its parts removed:

- a head ``(layer, head)``: its output zeroed before the output projection (the other heads and
  ``W_o``'s bias are kept), as TransformerLens's head ablation does;
- an expert ``(layer, expert)`` of a mixture of experts: removed from routing; each token's router
  chooses its k among the remaining experts from the same softmax, renormalised;
- a scan layer ``mixers=[layer]`` of a state-space model: the mixer's output zeroed, so the
  residual stream passes the layer unchanged;
- a token position ``tokens=[i]``: its token embedding zeroed (position information stays).

Hooks are put on the model's modules once and stay; they act only inside ``ablate`` and only in
the thread that called it (a context variable), so other people's runs of the same model are
never touched.

``attribution`` says how much each input token matters to one prediction: gradient × input (on
the token embeddings) and the knock-one-out difference (the prediction's log-probability with
the token's embedding zeroed, against the unmodified run).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from contextvars import ContextVar

import torch
from torch import Tensor, nn

from archplay.models.analysis.steps import attention_modules

# {module: function} for the modules an ablate() call changes; None outside ablate().
_ACTIVE: ContextVar[dict | None] = ContextVar("archplay_ablation", default=None)
_HOOKED_LOCK = threading.Lock()


def _pre_hook(module, args):
    act = _ACTIVE.get()
    if act is None or module not in act or act[module][0] != "pre":
        return None
    return act[module][1](args)


def _post_hook(module, args, output):
    act = _ACTIVE.get()
    if act is None or module not in act or act[module][0] != "post":
        return None
    return act[module][1](output)


def _hook(module: nn.Module) -> None:
    """Give ``module`` the two dormant hooks (once)."""
    with _HOOKED_LOCK:
        if not getattr(module, "_archplay_hooked", False):
            module.register_forward_pre_hook(_pre_hook)
            module.register_forward_hook(_post_hook)
            module._archplay_hooked = True


def _pairs(name: str, pairs: Iterable) -> list[tuple[int, int]]:
    try:
        return sorted({(int(a), int(b)) for a, b in pairs})
    except (TypeError, ValueError):
        raise ValueError(f"{name} are (layer, index) pairs") from None


def _in_range(name: str, value: int, n: int) -> None:
    if not 0 <= value < n:
        raise ValueError(f"{name} {value} is out of range (0 to {n - 1})")


def _zero_heads(heads: list[int], head_dim: int):
    def f(args):
        (x, *rest) = args
        x = x.clone()
        for h in heads:
            x[..., h * head_dim : (h + 1) * head_dim] = 0
        return (x, *rest)

    return f


def _zero_positions(positions: list[int]):
    def zero(x: Tensor) -> Tensor:
        x = x.clone()
        x[:, positions] = 0
        return x

    return zero


def _route_without(router, off: Tensor):
    def f(output):
        logits = output[0]
        return (logits, *router.choose(logits, off))

    return f


def _mixer_off(output):
    out, *rest = output
    return (torch.zeros_like(out), *rest)


def plan(model: nn.Module, *, heads=(), experts=(), tokens=(), mixers=(), kind: str = "self", n_tokens: int | None = None) -> dict:
    """{module: ("pre" | "post", function)}: what ``ablate`` changes, checked (ValueError for what the model lacks)."""
    family = model.config.family
    act: dict = {}
    heads, experts = _pairs("heads", heads), _pairs("experts", experts)
    if heads:
        modules = attention_modules(model, kind)
        by_layer: dict[int, list[int]] = {}
        for layer, h in heads:
            _in_range("layer", layer, len(modules))
            _in_range("head", h, modules[layer].n_head)
            by_layer.setdefault(layer, []).append(h)
        for layer, hs in by_layer.items():
            m = modules[layer]
            act[m.o_proj] = ("pre", _zero_heads(hs, m.head_dim))
    if experts:
        if not any(hasattr(getattr(layer, "mlp", None), "router") for layer in getattr(model, "layers", ())):
            raise ValueError("experts can be switched off in a mixture of experts only")
        by_layer = {}
        for layer, e in experts:
            _in_range("layer", layer, len(model.layers))
            router = getattr(getattr(model.layers[layer], "mlp", None), "router", None)
            if router is None:
                raise ValueError(f"layer {layer} has no experts (a dense layer)")
            _in_range("expert", e, router.weight.shape[0])
            by_layer.setdefault(layer, []).append(e)
        for layer, es in by_layer.items():
            router = model.layers[layer].mlp.router
            n = router.weight.shape[0]
            if n - len(es) < router.top_k:
                raise ValueError(f"layer {layer} routes each token to {router.top_k} of {n} experts: switch off at "
                                 f"most {n - router.top_k}")  # fmt: skip
            off = torch.zeros(n, dtype=torch.bool, device=router.weight.device)
            off[es] = True
            act[router] = ("post", _route_without(router, off))
    mixers = sorted({int(m) for m in mixers})
    if mixers:
        if not any(hasattr(layer, "mixer") for layer in getattr(model, "layers", ())):
            raise ValueError("mixers (a layer's scan) are switched off in a state-space model (Mamba) only")
        for layer in mixers:
            _in_range("layer", layer, len(model.layers))
            if not hasattr(model.layers[layer], "mixer"):  # a hybrid's attention layer
                raise ValueError(f"layer {layer} is an attention layer, not a Mamba layer: it has no scan to switch off")
            act[model.layers[layer].mixer] = ("post", _mixer_off)
    tokens = sorted({int(t) for t in tokens})
    if tokens:
        if n_tokens is not None:
            for t in tokens:
                _in_range("token", t, n_tokens)
        zero = _zero_positions(tokens)
        if family == "encoder-decoder":  # the input tokens are the encoder's: zero its input embeddings
            act[model.encoder] = ("pre", lambda args: (zero(args[0]), *args[1:]))
        else:
            act[model.embed_tokens] = ("post", zero)
    return act


def ablate(model: nn.Module, ids: Tensor, heads=(), experts=(), tokens=(), *, mixers=(), kind: str = "self",
           **model_kwargs):  # fmt: skip
    """The model's usual output for ``ids`` with the given parts switched off (see the module's doc).

    ``heads`` (layer, head) pairs of the ``kind`` attention ("self"; an encoder-decoder also "decoder",
    "cross"); ``experts`` (layer, expert) pairs; ``tokens`` input positions; ``mixers`` scan layers.
    Other keyword arguments go to the model (``trace=True``, ``decoder_input_ids=`` …)."""
    act = plan(model, heads=heads, experts=experts, tokens=tokens, mixers=mixers, kind=kind, n_tokens=ids.shape[-1])
    for module in act:
        _hook(module)
    token = _ACTIVE.set(act)
    try:
        return model(ids, **model_kwargs)
    finally:
        _ACTIVE.reset(token)


def capture_input(model: nn.Module, module: nn.Module, ids: Tensor, **model_kwargs) -> Tensor:
    """The first input ``module`` received in one forward pass of ``model`` on ``ids`` (nothing changed)."""
    got: list[Tensor] = []

    def record(args):
        if not got:
            got.append(args[0].detach())

    _hook(module)
    token = _ACTIVE.set({module: ("pre", record)})
    try:
        model(ids, **model_kwargs)
    finally:
        _ACTIVE.reset(token)
    if not got:
        raise RuntimeError("the module did not run in this forward pass")
    return got[0]


def attribution(model: nn.Module, ids: Tensor, position: int, target: int, **model_kwargs) -> dict:
    """How much each input token matters to the log-probability of ``target`` at ``position``.

    Returns {"logprob": the unmodified log-probability, "grad_x_input": (T,) Σ_d grad·embedding per token,
    "knock_out": (T,) the log-probability with that token's embedding zeroed minus the unmodified one}.
    For an encoder-decoder ``position`` is a decoder position and the tokens are the encoder's."""
    T = ids.shape[-1]
    family = model.config.family
    emb = model.shared if family == "encoder-decoder" else model.embed_tokens
    captured: list[Tensor] = []

    def keep(x: Tensor) -> Tensor:
        x = x.detach().requires_grad_(True)
        captured.append(x)
        return x

    target_module = model.encoder if family == "encoder-decoder" else emb
    _hook(target_module)
    where = "pre" if family == "encoder-decoder" else "post"
    fn = (lambda args: (keep(args[0]), *args[1:])) if where == "pre" else keep
    token = _ACTIVE.set({target_module: (where, fn)})
    try:
        with torch.inference_mode(False), torch.enable_grad():
            logits = model(ids, **model_kwargs).logits[0, position].float()
            logprob = torch.log_softmax(logits, -1)[target]
            (grad,) = torch.autograd.grad(logprob, captured[0])
    finally:
        _ACTIVE.reset(token)
    gxi = (grad * captured[0].detach()).sum(-1)[0].float().cpu()  # (T,)
    base = float(logprob.detach())
    knock = torch.cat([_knock_one_out(model, ids, rows, position, target, target_module, where, **model_kwargs)
                       for rows in torch.arange(T).split(KNOCK_BATCH)]) - base  # fmt: skip
    return {"logprob": base, "grad_x_input": gxi, "knock_out": knock}


KNOCK_BATCH = 32  # knock-one-out runs: this many copies of the input in one batch


@torch.inference_mode()
def _knock_one_out(model, ids, rows: Tensor, position: int, target: int, module, where: str, **model_kwargs) -> Tensor:
    """log P(target at position) with token ``rows[j]`` zeroed in copy j: (len(rows),), one batched pass."""
    n = rows.shape[0]
    batch = {k: (v.expand(n, *v.shape[1:]) if torch.is_tensor(v) and v.shape[0] == 1 else v)
             for k, v in model_kwargs.items()}  # fmt: skip

    def zero(x: Tensor) -> Tensor:
        x = x.clone()
        x[torch.arange(n), rows.to(x.device)] = 0  # copy j loses token rows[j]
        return x

    fn = (lambda args: (zero(args[0]), *args[1:])) if where == "pre" else zero
    _hook(module)
    token = _ACTIVE.set({module: (where, fn)})
    try:
        logits = model(ids.expand(n, -1), **batch).logits[:, position].float()  # (n, V)
    finally:
        _ACTIVE.reset(token)
    return torch.log_softmax(logits, -1)[:, target].cpu()


__all__ = ["ablate", "attribution", "capture_input", "plan"]
