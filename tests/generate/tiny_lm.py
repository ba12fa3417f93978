"""Tiny causal LMs built from config, with tokenizers built in code (no hub, no files).

Two kinds, both real ``transformers`` model classes driven through ``model.generate``:

* :func:`tiny_llama`: a randomly initialised two-layer ``LlamaForCausalLM`` (a few thousand
  parameters) over a word-level tokenizer with a chat template. Its texts are word salad,
  but sampling, padding, seeds and batching run exactly as for a real checkpoint.
* :func:`bigram_llama`: a ``LlamaForCausalLM`` with no decoder layers whose weights are set
  so that it is a bigram model with a chosen next-token table. With one token per whole
  line of text it answers with lines we choose, in proportions we choose: a scripted LM
  for the caption-perturbation tests.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

if TYPE_CHECKING:
    from utilgen.generate.causal_lm import CausalLMGenerator

SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }} </s> "
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_WORD_LIST = (
    "the a of to and in is was for on that with as by at from it his he said be has have "
    "are an this which not but had they were will been their more its one new after also "
    "year two first people would who time there government match film market company "
    "game music minister growth team technology economy election player album shares "
    "phone win party club sales chart digital"
)
WORDS = tuple(_WORD_LIST.split())

# Characters that a word-level tokenizer must see as their own tokens.
PUNCTUATION = list(".,:;!?'\"-()")


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: on a busy two-core machine, thread contention makes the tiny
    matmuls of these models a hundred times slower than on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fast_tokenizer(
    tokenizer: Tokenizer, *, chat_template: str | None
) -> PreTrainedTokenizerFast:
    out = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
    )
    if chat_template is not None:
        out.chat_template = chat_template
    return out


def tiny_word_tokenizer(*, chat_template: str | None = CHAT_TEMPLATE) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over :data:`WORDS` and punctuation; unknown words are ``<unk>``.

    Decoding joins tokens with spaces. ``chat_template=None`` gives a tokenizer without one.
    """
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *WORDS, *PUNCTUATION])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return _fast_tokenizer(tok, chat_template=chat_template)


def tiny_llama(
    seed: int = 0, *, chat_template: str | None = CHAT_TEMPLATE
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A random two-layer Llama (hidden size 32) and its word-level tokenizer, in eval mode."""
    tokenizer = tiny_word_tokenizer(chat_template=chat_template)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # Random init puts all logits near zero, so greedy decoding would hinge on float noise;
    # a larger output layer gives clear winners (as a trained model has).
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    return model.eval(), tokenizer


def line_tokenizer(lines: Sequence[str]) -> PreTrainedTokenizerFast:
    """A tokenizer whose tokens are whole lines (plus ``"\\n"``), with the chat template.

    Text is split at newlines only; a line not in ``lines`` is one ``<unk>`` token.
    """
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, "\n", *lines])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("\n", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return _fast_tokenizer(tok, chat_template=CHAT_TEMPLATE)


def bigram_llama(
    tokenizer: PreTrainedTokenizerFast, table: Mapping[str, Mapping[str, float]]
) -> LlamaForCausalLM:
    """A ``LlamaForCausalLM`` without decoder layers that is a bigram model.

    ``table[token][next]`` is the probability of ``next`` after ``token`` (tokens as
    strings of ``tokenizer``); a token missing from the table is followed by ``</s>``.

    With no layers the logits are ``lm_head(rmsnorm(embed(x)))``. Embeddings are one-hot
    rows, so the RMS norm scales them by sqrt(hidden), and ``lm_head`` holds the log
    probabilities divided by that factor.
    """
    vocab = len(tokenizer)
    hidden = 8 * math.ceil(vocab / 8)  # 4 heads of an even size (RoPE)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=4,
        num_hidden_layers=0,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        rms_norm_eps=1e-12,
    )
    model = LlamaForCausalLM(config)
    ids = tokenizer.convert_tokens_to_ids
    log_probs = torch.full((vocab, vocab), -1e4)
    log_probs[:, tokenizer.eos_token_id] = 0.0
    for token, nexts in table.items():
        row = torch.full((vocab,), -1e4)
        for nxt, p in nexts.items():
            row[ids(nxt)] = math.log(p)
        log_probs[ids(token)] = row
    with torch.no_grad():
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, :vocab] = torch.eye(vocab)
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        # logits[next] = lm_head[next] . (e_token * sqrt(hidden)) = log_probs[token, next]
        model.lm_head.weight[:, :vocab] = log_probs.T / math.sqrt(hidden)
    return model.eval()


def scripted_lm(lines: Sequence[str], stop: float = 0.2) -> CausalLMGenerator:
    """A ``CausalLMGenerator`` whose replies, after the chat template's assistant tag, are 1+
    lines of ``lines``, each drawn uniformly, ended with probability ``stop`` after each line:
    an LM whose every possible answer the test knows."""
    from utilgen.generate.causal_lm import CausalLMGenerator, SamplingSettings

    tokenizer = line_tokenizer(lines)
    uniform = {line: 1 / len(lines) for line in lines}
    table = {
        "<|assistant|>": uniform,
        "\n": {**{k: v * (1 - stop) for k, v in uniform.items()}, "</s>": stop},
        **{line: {"\n": 1.0} for line in lines},
    }
    return CausalLMGenerator(
        bigram_llama(tokenizer, table), tokenizer, name="scripted",
        sampling=SamplingSettings(temperature=1.0, top_p=1.0, max_new_tokens=40),
    )
