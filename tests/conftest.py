"""Shared fixtures: tiny random Hugging Face checkpoints written to temporary folders.

Nothing is downloaded: configs are built in code, weights are random, and a small
word-level tokenizer is made on the spot, so loading and parity run offline.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

WORDS = (
    "the a cat dog sat on mat red ball mia tom has big small ran to park she he it and "
    "saw blue green box tree house happy sad went home was is with her his they then"
).split()


def word_tokenizer(kind: str):
    """A word-level tokenizer: BERT-style ([CLS] ... [SEP]) for encoders, plain for decoders."""
    import transformers as T
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    if kind == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        return T.BertTokenizer(vocab={w: i for i, w in enumerate(specials + WORDS)})
    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.WordPiece()  # joins words with spaces
    return T.PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> None:
    """Give every parameter (biases and norm scales too) random values, so nothing is trivially 0 or 1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * std
            p.copy_(1.0 + noise if ("norm" in name.lower() and name.endswith("weight")) else noise)


def hf_config(kind: str, **overrides):
    import transformers as T

    common = dict(vocab_size=99, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if kind == "gpt2":
        cfg = T.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, **common)
    elif kind == "llama":
        cfg = T.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, tie_word_embeddings=False, max_position_embeddings=256,
                            **common)  # fmt: skip
    elif kind == "qwen2":
        cfg = T.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                            num_key_value_heads=1, use_sliding_window=True, sliding_window=4,
                            max_window_layers=1, max_position_embeddings=256, tie_word_embeddings=True,
                            **common)  # fmt: skip
    elif kind == "mixtral":
        cfg = T.MixtralConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                              max_position_embeddings=256, **common)  # fmt: skip
    elif kind == "qwen2_moe":
        cfg = T.Qwen2MoeConfig(hidden_size=32, intermediate_size=48, moe_intermediate_size=24,
                               shared_expert_intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
                               num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, mlp_only_layers=[1],
                               max_position_embeddings=256, **common)  # fmt: skip
    elif kind == "bert":
        cfg = T.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                           max_position_embeddings=128, vocab_size=99, pad_token_id=0)  # fmt: skip
    elif kind == "mistral":  # a window on every layer, narrower than the prompt
        cfg = T.MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=16, sliding_window=4, max_position_embeddings=256,
                              **common)  # fmt: skip
    elif kind == "phi3":  # fused qkv_proj and gate_up_proj, partial RoPE
        cfg = T.Phi3Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=256,
                           rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
                           **common)  # fmt: skip
    elif kind == "qwen3":  # q/k norms, head_dim explicit (not hidden_size / heads)
        cfg = T.Qwen3Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=16, max_position_embeddings=256, **common)  # fmt: skip
    elif kind == "gpt_neox":  # Pythia: parallel residual, RoPE on a quarter of each head, fused per-head qkv
        cfg = T.GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              max_position_embeddings=256, **common)  # fmt: skip
    elif kind == "qwen3_moe":  # q/k norms per head, a dense layer, no shared expert
        cfg = T.Qwen3MoeConfig(hidden_size=32, intermediate_size=48, moe_intermediate_size=24, num_hidden_layers=3,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=4,
                               num_experts_per_tok=2, norm_topk_prob=True, mlp_only_layers=[1],
                               max_position_embeddings=256, **common)  # fmt: skip
    elif kind == "olmoe":  # q/k norms over the whole projections
        cfg = T.OlmoeConfig(hidden_size=32, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
                            max_position_embeddings=256, **common)  # fmt: skip
    elif kind == "gemma2":  # soft-capping, sandwich norms, local/global layers, query_pre_attn_scalar
        cfg = T.Gemma2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                             num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24, sliding_window=4,
                             attn_logit_softcapping=4.0, final_logit_softcapping=3.0, max_position_embeddings=256,
                             **common)  # fmt: skip
    elif kind == "gemma3_text":  # + q/k norms, a local RoPE base, linear scaling on the global layers
        cfg = T.Gemma3TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                 num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24, sliding_window=4,
                                 layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                                 rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0,
                                                                     "rope_theta": 1_000_000.0},
                                                  "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}},
                                 final_logit_softcapping=3.0, max_position_embeddings=256, **common)  # fmt: skip
    elif kind == "deepseek_v3":  # latent attention (low-rank q), sigmoid group-limited router, a dense first layer
        cfg = T.DeepseekV3Config(hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=3,
                                 num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=12, q_lora_rank=20,
                                 qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6, n_routed_experts=8,
                                 num_experts_per_tok=2, n_group=4, topk_group=2, n_shared_experts=1,
                                 first_k_dense_replace=1, routed_scaling_factor=2.5, max_position_embeddings=256,
                                 **common)  # fmt: skip
    elif kind == "deepseek_v2":  # latent attention (plain q), a softmax router limited to 1 of 4 groups, scaled
        # (groups scored by their best expert matter only when top_k exceeds topk_group)
        cfg = T.DeepseekV2Config(hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=3,
                                 num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=12, q_lora_rank=None,
                                 qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6, n_routed_experts=8,
                                 num_experts_per_tok=2, topk_method="group_limited_greedy", n_group=4, topk_group=1,
                                 n_shared_experts=2, first_k_dense_replace=1, routed_scaling_factor=2.0,
                                 max_position_embeddings=256, **common)  # fmt: skip
    elif kind == "jamba":  # Mamba, attention, Mamba, attention; experts on layers 0 and 2 (periods of 2)
        cfg = T.JambaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
                            num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, attn_layer_period=2,
                            attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=0, mamba_d_state=8,
                            mamba_dt_rank=4, max_position_embeddings=256, **common)  # fmt: skip
    elif kind in ("roberta", "xlm-roberta"):  # positions after padding_idx 1
        cls = T.RobertaConfig if kind == "roberta" else T.XLMRobertaConfig
        cfg = cls(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                  max_position_embeddings=66, type_vocab_size=1, vocab_size=99, pad_token_id=1)  # fmt: skip
    elif kind == "distilbert":
        cfg = T.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=128,
                                 vocab_size=99, pad_token_id=0)  # fmt: skip
    elif kind in ("bart", "mbart"):  # learned positions from row 2, post-norm (mBART: pre-norm); starts from </s>
        cls = T.BartConfig if kind == "bart" else T.MBartConfig
        cfg = cls(vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=64,
                  pad_token_id=0, bos_token_id=2, eos_token_id=3, decoder_start_token_id=3,
                  forced_eos_token_id=None)  # fmt: skip
    elif kind == "gpt_neo":  # global and local layers (a window of 4), q·k unscaled
        cfg = T.GPTNeoConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, window_size=4,
                             attention_types=[[["global", "local"], 1]], max_position_embeddings=128,
                             **common)  # fmt: skip
    elif kind == "gptj":  # one LayerNorm for the parallel block, interleaved RoPE on 4 of 8 channels
        cfg = T.GPTJConfig(n_embd=32, n_layer=2, n_head=4, n_inner=64, rotary_dim=4, n_positions=128,
                           **common)  # fmt: skip
    elif kind == "opt":  # learned positions from row 2, ReLU
        cfg = T.OPTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                          max_position_embeddings=128, word_embed_proj_dim=32, **common)  # fmt: skip
    elif kind == "phi":  # one LayerNorm for the parallel block, half-split RoPE on half of each head
        cfg = T.PhiConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          max_position_embeddings=128, **common)  # fmt: skip
    elif kind == "olmo2":  # norms after the sublayers, none before; q/k norms over the whole projections
        cfg = T.Olmo2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, max_position_embeddings=256, **common)  # fmt: skip
    elif kind == "stablelm":  # LayerNorm, RoPE on a quarter of each head, q/k/v biases, per-head q/k LayerNorms
        cfg = T.StableLmConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, use_qkv_bias=True, qk_layernorm=True,
                               max_position_embeddings=256, **common)  # fmt: skip
    elif kind == "modernbert":  # global/local layers (±2 keys), two RoPE bases, GeGLU, no biases, no first pre-norm
        cfg = T.ModernBertConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                                 local_attention=4, max_position_embeddings=128, vocab_size=99, pad_token_id=0,
                                 bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3,
                                 rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000.0},
                                                  "sliding_attention": {"rope_type": "default", "rope_theta": 50.0}})  # fmt: skip
    else:
        raise ValueError(kind)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def make_hf_model(kind: str, folder: Path, *, head: bool = True, seed: int = 0, **overrides):
    """Save a tiny random ``kind`` checkpoint (model + tokenizer) in ``folder``; return the HF model."""
    import transformers as T

    cfg = hf_config(kind, **overrides)
    cfg._attn_implementation = "eager"
    if kind == "bert":
        cls = T.BertForMaskedLM if head else T.BertModel
    elif kind == "modernbert":
        cls = T.ModernBertForMaskedLM if head else T.ModernBertModel
    elif kind in ("bart", "mbart"):
        cls = T.AutoModelForSeq2SeqLM
    else:
        cls = T.AutoModelForCausalLM
    auto = cls in (T.AutoModelForCausalLM, T.AutoModelForSeq2SeqLM)
    model = cls.from_config(cfg, attn_implementation="eager") if auto else cls(cfg)
    randomize(model, seed)
    model.eval()
    model.save_pretrained(folder)
    word_tokenizer("bert" if kind in ("bert", "modernbert") else "decoder").save_pretrained(folder)
    return model


def hf_routed(hf, ids, routers, **outputs):
    """transformers' outputs for ``ids`` (hidden states and attentions, plus ``outputs``) and, in order, what each
    of its ``routers`` (the router modules) returned, hooked: (router logits, weights, top-k indices)."""
    got = []
    hooks = [r.register_forward_hook(lambda m, i, o: got.append(o)) for r in routers]
    try:
        with torch.no_grad():
            ref = hf(ids, output_hidden_states=True, output_attentions=True, **outputs)
    finally:
        for h in hooks:
            h.remove()
    return ref, got


PARITY_PROMPT = "mia has a red ball and the cat sat on the mat then she ran to the park with her dog"


def assert_causal_parity(ours, hf, tok, *, layers: int, atol: float = 1e-4, prompt: str = PARITY_PROMPT,
                         last=None, stream: bool = False) -> None:  # fmt: skip
    """A causal LM of ours against transformers' eager run of the same weights: the logits (traced and untraced),
    every attention map, the hidden states (transformers 5: the embeddings, each layer's output, the last one
    after the final norm; ``last(h)`` maps our last one to theirs, default ``ours.norm``) and 32 greedy
    tokens (and streamed, with ``stream``)."""
    ids = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        ref = hf(ids, output_hidden_states=True, output_attentions=True)
        out = ours(ids, trace=True)
        fast = ours(ids)
    torch.testing.assert_close(out.logits, ref.logits, atol=atol, rtol=0)
    torch.testing.assert_close(fast.logits, ref.logits, atol=atol, rtol=0)
    assert len(out.trace.attentions) == len(ref.attentions) == layers
    for a, b in zip(out.trace.attentions, ref.attentions, strict=True):
        torch.testing.assert_close(a, b, atol=atol, rtol=0)
    hs = out.trace.hidden_states
    assert len(hs) == len(ref.hidden_states) == layers + 1
    for a, b in zip(hs[:-1], ref.hidden_states[:-1]):
        torch.testing.assert_close(a, b, atol=atol, rtol=0)
    torch.testing.assert_close((last or ours.norm)(hs[-1]), ref.hidden_states[-1], atol=atol, rtol=0)
    ids = torch.tensor([tok.encode("the cat sat on the")])
    with torch.no_grad():
        ref = hf.generate(ids, max_new_tokens=32, do_sample=False, pad_token_id=0)
    assert ref.shape[1] == ids.shape[1] + 32
    assert ours.generate(ids, max_new_tokens=32, temperature=0.0).tolist() == ref.tolist()
    if stream:
        streamed = [t for t, _ in ours.generate_stream(ids, max_new_tokens=32, temperature=0.0)]
        assert streamed == ref[0, ids.shape[1] :].tolist()


@pytest.fixture(scope="module")
def hf_ckpt(tmp_path_factory):
    """hf_ckpt(kind, **overrides) -> (ours, tokenizer, transformers' model, folder): ``make_hf_model``'s folder
    loaded by archplay; each (kind, overrides) written once per test module."""
    written = {}

    def make(kind: str, **overrides):
        from archplay import models

        key = json.dumps([kind, overrides], sort_keys=True)
        if key not in written:
            folder = tmp_path_factory.mktemp(kind) / kind
            written[key] = folder, make_hf_model(kind, folder, **overrides)
        folder, hf = written[key]
        return (*models.load(folder), hf, folder)

    return make


@pytest.fixture(autouse=True, scope="session")
def no_hub(tmp_path_factory):
    """Every test (and every server it starts) sees an empty Hugging Face cache, offline: nothing is
    downloaded, and what a developer's own cache holds changes no result."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf_cache")))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture
def hf_folder(tmp_path):
    """Factory: hf_folder("llama") -> (folder, hf_model)."""

    def make(kind: str, **kw):
        folder = tmp_path / kind
        return folder, make_hf_model(kind, folder, **kw)

    return make


@contextmanager
def served_demo(demo, *, css: str = "", page_js: bool = True):
    """``demo`` (a ``gr.Blocks``) queued and served in this process on a free port of 127.0.0.1, with the page's
    theme, CSS (+ ``css``) and, unless ``page_js`` is False, the page script -> its URL; closed on exit."""
    import socket

    from archplay.app.explore import page as explore
    from archplay.app.main import CSS, THEME

    demo.queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, ssr_mode=False,
                theme=THEME, css=CSS + css, **({"js": explore.PAGE_JS} if page_js else {}))  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@contextmanager
def app_server(log_dir: Path, *args: str, timeout: float = 120.0):
    """``python -m archplay --host 127.0.0.1 --port <free> --device cpu *args`` -> its URL once ``/``
    answers (200, or 401 behind --auth); the server (and what it started) is stopped on exit."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    from bench.report import stop

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = log_dir / f"app-{port}.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "archplay", "--port", str(port), "--host", "127.0.0.1",
                                 "--device", "cpu", *args], cwd=Path(__file__).resolve().parents[1], stdout=log,
                                stderr=subprocess.STDOUT, env=env)  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the app exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except urllib.error.HTTPError as e:
                if e.code == 401:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the app did not answer within {timeout:.0f} s:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        stop(proc)
