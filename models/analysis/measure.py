"""Measurements that ``estimate`` is checked against: FLOPs counted, cache bytes held, memory allocated.

    measure_flops(model, ids)                     # FLOPs of one forward pass, by FlopCounterMode
    measure_kv_cache(model, ids, max_new_tokens)  # bytes of the KV cache (or state) generate ends with
    measure_training_step(model, batch)           # peak bytes of one real training step (AdamW)

Memory is counted by ``LiveBytes``, a ``TorchDispatchMode``: every tensor an operation returns
has its storage recorded (once, however many views share it) and a weak reference whose callback
subtracts it again when the storage is freed; the running sum after each operation is the live
tensor memory, its maximum the peak. This is the allocator's view without the allocator: it works
on the CPU, where torch keeps no memory statistics (``tracemalloc`` sees only Python's own
allocations and the process's RSS includes freed pages glibc keeps), and it counts the backward
pass too (autograd runs its operations through the same dispatch). It does not see an operation's
internal scratch buffers, which exist only while that one kernel runs.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    """Live tensor bytes while active: ``now``, and ``peak`` since entering (or ``reset``).

    ``baseline`` tensors (weights, optimizer state) that exist before the mode is entered are
    counted from the start, so the peak is of everything live, not only of what the step adds.
    """

    def __init__(self, baseline: Iterable[Tensor] = ()):
        super().__init__()
        self.live: dict[tuple, int] = {}  # storage (device, address) -> bytes
        self._refs: dict[tuple, weakref.ref] = {}
        self.now = 0
        self.peak = 0
        for t in baseline:
            self.add(t)

    def add(self, t) -> None:
        if not isinstance(t, Tensor) or t.device.type == "meta":
            return
        storage = t.untyped_storage()
        key = (storage.device.type, storage.data_ptr())
        if key in self.live or storage.nbytes() == 0:
            return
        self.live[key] = storage.nbytes()
        self.now += storage.nbytes()
        self.peak = max(self.peak, self.now)

        def freed(_, key=key) -> None:
            self.now -= self.live.pop(key, 0)
            self._refs.pop(key, None)

        self._refs[key] = weakref.ref(storage, freed)

    def reset(self) -> None:
        self.peak = self.now

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            self.add(t)
        return out


def measure_flops(model: nn.Module, ids: Tensor, **kwargs) -> dict:
    """{"total", "by_op"} of one forward pass (no gradient), as ``FlopCounterMode`` counts them.

    FlopCounterMode counts matrix products (mm, addmm, bmm, convolution, the fused attention
    kernels it knows) at 2 FLOPs per multiply-add, and nothing element-wise. The CPU's fused
    attention kernel is not among those it knows, so attention runs through SDPA's math path here
    (the same arithmetic as explicit matrix products), which it counts in full: every score of the
    (T, S) matrix, masked or not.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(ids, **kwargs)
    by_op = {str(op).removeprefix("aten."): n for op, n in counter.get_flop_counts()["Global"].items()}
    return {"total": counter.get_total_flops(), "by_op": by_op}


def _tensor_bytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def measure_kv_cache(model: nn.Module, ids: Tensor, max_new_tokens: int = 4) -> dict:
    """The cache ``model.generate(ids, max_new_tokens)`` holds at its end, in bytes.

    ``generate`` builds its cache with ``model.new_cache()`` (attention models) and hands it on
    step by step; wrapping ``new_cache`` lets us keep a reference and read it afterwards. The
    cache then holds T + new - 1 positions per sequence (the last token drawn is never fed back).
    A model that carries a recurrent state instead (Mamba) is measured from its forward pass's
    ``cache`` over ``ids``: its size does not depend on the length.
    """
    if not hasattr(model, "new_cache"):
        with torch.no_grad():
            state = model(ids).cache
        total = sum(_tensor_bytes(s.conv) + _tensor_bytes(s.ssm) for s in state)
        return {"bytes": total, "positions": None, "layers": len(state)}
    kept = []
    make = model.new_cache

    def keep():
        kept.append(make())
        return kept[-1]

    model.new_cache = keep
    try:
        model.generate(ids, max_new_tokens=max_new_tokens)
    finally:
        del model.new_cache  # back to the class's method
    cache = kept[-1]
    total = sum(_tensor_bytes(c.k) + _tensor_bytes(c.v) for c in cache)
    return {"bytes": total, "positions": cache[0].length, "layers": len(cache)}


def _lm_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    ids, labels = batch
    logits = model(ids).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))


def measure_training_step(model: nn.Module, batch: tuple[Tensor, Tensor], *, lr: float = 1e-3) -> dict:
    """Peak live bytes of one training step, as archplay's training loop runs it.

    ``batch`` is (input ids, labels) for a model whose forward returns logits per position (decoder,
    moe, ssm; an encoder with its masked-LM head). The loop of ``training.train.fit``: forward and
    loss, ``zero_grad(set_to_none=True)``, backward, gradient clipping, ``AdamW.step``. A first step
    creates the optimizer's state and the gradients; the second, measured, starts from the steady
    state (weights, the previous step's gradients, AdamW's two moments), which is the baseline.

    Returns ``peak`` (bytes), ``baseline`` (what was live before the step) and ``after_forward``
    (live bytes once the loss is computed: baseline + the activations saved for backward).
    """
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)

    def step(probe: LiveBytes | None = None) -> int | None:
        loss = _lm_loss(model, batch)
        after = probe.now if probe is not None else None
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return after

    step()
    # The baseline as a generator: a list would keep the old gradients alive after zero_grad.
    grads = (p.grad for p in model.parameters() if p.grad is not None)
    state = (t for s in opt.state.values() for t in s.values() if isinstance(t, Tensor))
    with LiveBytes(itertools.chain(model.parameters(), grads, state, batch)) as probe:
        start = probe.now
        after = step(probe)
    return {"peak": probe.peak, "baseline": start, "after_forward": after}


__all__ = ["LiveBytes", "measure_flops", "measure_kv_cache", "measure_training_step"]
