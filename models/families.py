"""The families archplay knows: the one place that lists them (see ``archplay.models.registry``).

Adding a family is its model file in ``architectures/`` plus one entry here (and, if it reads
Hugging Face checkpoints, a converter in ``checkpoints/``); a family of a test or another program
can ``registry.register`` itself instead.
"""

from __future__ import annotations

from archplay.models.analysis import card
from archplay.models.architectures.decoder import Decoder, DecoderConfig
from archplay.models.architectures.encoder import Encoder, EncoderConfig
from archplay.models.architectures.encoder_decoder import EncoderDecoder, EncoderDecoderConfig
from archplay.models.architectures.hybrid import HybridConfig, HybridDecoder
from archplay.models.architectures.moe import MoEConfig, MoEDecoder
from archplay.models.architectures.ssm import Mamba, MambaConfig
from archplay.models.checkpoints import (
    bart,
    bert,
    deepseek,
    deepseek_v2,
    gemma,
    gpt2,
    gpt_neox,
    jamba,
    llama,
    mamba,
    more_decoders,
    more_models,
    t5,
)
from archplay.models.registry import Family, register

ATTENTION_TRACE = ("hidden_states", "attentions")

DECODER = Family(
    name="decoder", title="decoder-only transformer", config=DecoderConfig, model=Decoder, objective="causal",
    card_rows=card.decoder_rows, parameter_rules=card.DECODER_RULES, trace_fields=ATTENTION_TRACE,
    views=("attention",),
    checkpoints={"gpt2": gpt2.CONVERTER, "llama": llama.LLAMA, "mistral": llama.MISTRAL, "qwen2": llama.QWEN2,
                 "qwen3": llama.QWEN3, "phi3": llama.PHI3, "gpt_neox": gpt_neox.CONVERTER,
                 "gemma2": gemma.GEMMA2, "gemma3_text": gemma.GEMMA3_TEXT,
                 "gpt_neo": more_decoders.GPT_NEO, "gptj": more_decoders.GPTJ, "opt": more_decoders.OPT,
                 "phi": more_decoders.PHI, "olmo2": more_models.OLMO2, "stablelm": more_models.STABLELM},
)  # fmt: skip
ENCODER = Family(
    name="encoder", title="encoder-only transformer (BERT-style)", config=EncoderConfig, model=Encoder,
    objective="masked", card_rows=card.encoder_rows, parameter_rules=card.ENCODER_RULES,
    trace_fields=ATTENTION_TRACE, views=("attention",),
    checkpoints={"bert": bert.CONVERTER, "roberta": bert.ROBERTA, "xlm-roberta": bert.ROBERTA,
                 "distilbert": bert.DISTILBERT, "modernbert": more_models.MODERNBERT},
)  # fmt: skip
ENCODER_DECODER = Family(
    name="encoder-decoder", title="encoder-decoder transformer (T5, BART)", config=EncoderDecoderConfig,
    model=EncoderDecoder, objective="translation", card_rows=card.encoder_decoder_rows,
    parameter_rules=card.ENCODER_DECODER_RULES,
    trace_fields=(*ATTENTION_TRACE, "decoder_hidden_states", "decoder_attentions", "cross_attentions"),
    views=("attention", "translation"), checkpoints={"t5": t5.CONVERTER, "bart": bart.CONVERTER,
                                                 "mbart": bart.MBART},
)  # fmt: skip
MOE = Family(
    name="moe", title="decoder-only mixture of experts (Mixtral, DeepSeek)", config=MoEConfig, model=MoEDecoder,
    objective="causal", card_rows=card.moe_rows, parameter_rules=card.DECODER_RULES,
    trace_fields=(*ATTENTION_TRACE, "router_logits", "expert_indices"), views=("attention", "routing"),
    checkpoints={"mixtral": llama.MIXTRAL, "qwen2_moe": llama.QWEN2_MOE, "qwen3_moe": llama.QWEN3_MOE,
                 "olmoe": llama.OLMOE, "deepseek_v2": deepseek_v2.DEEPSEEK_V2,
                 "deepseek_v3": deepseek.DEEPSEEK_V3},
)  # fmt: skip
SSM = Family(
    name="ssm", title="selective state-space model (Mamba, Mamba-2)", config=MambaConfig, model=Mamba,
    objective="causal",
    card_rows=card.ssm_rows, parameter_rules=card.SSM_RULES, trace_fields=("hidden_states", "ssm_attention", "ssm_delta"),
    views=("scan",), checkpoints={"mamba": mamba.CONVERTER, "mamba2": mamba.MAMBA2},
)  # fmt: skip
HYBRID = Family(
    name="hybrid", title="hybrid of attention, Mamba and mixture-of-experts layers (Jamba)", config=HybridConfig,
    model=HybridDecoder, objective="causal", card_rows=card.hybrid_rows, parameter_rules=card.HYBRID_RULES,
    # attentions: per attention layer; ssm_*: per Mamba layer; router_*: per MoE layer (hybrid.py's docstring)
    trace_fields=(*ATTENTION_TRACE, "router_logits", "expert_indices", "ssm_attention", "ssm_delta"),
    views=("attention", "routing"), checkpoints={"jamba": jamba.JAMBA},
)  # fmt: skip

for _family in (DECODER, ENCODER, ENCODER_DECODER, MOE, SSM, HYBRID):
    register(_family)
