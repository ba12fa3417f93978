"""Tiny causal LMs built from config, with tokenizers built in code (no hub, no files).

Two kinds, both real ``transformers`` model classes driven through ``model.generate``:

* :func:`tiny_llama`: a randomly initialised two-layer ``LlamaForCausalLM`` (a few thousand
  parameters) over a word-level tokenizer with a chat template. Its texts are word salad,
  but sampling, padding, seeds and batching run exactly as for a real checkpoint.
* :func:`bigram_llama`: a ``LlamaForCausalLM`` with no decoder layers whose weights are set
  so that it is a bigram model with a chosen next-token table. With one token per whole
  line of text it answers with lines we choose, in proportions we choose: a scripted LM
  for the caption-perturbation tests.

:func:`token_margins` records how close each token choice of a generator call came to a tie,
so that texts from different batch shapes can be compared exactly where that is justified.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedTokenizerFast,
)

if TYPE_CHECKING:
    from utilgen.generate.causal_lm import CausalLMGenerator
    from utilgen.generate.causal_lm_sampling import PerRowSampling

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


@dataclass
class TokenMargins:
    """How far the token choices of :class:`CausalLMGenerator` calls were from flipping.

    Texts from different batch shapes (padding, batch size, neighbours) or code paths see
    logits that differ by float noise, which changes a token only where the choice was that
    close to a tie. So two such texts may be compared exactly once every choice is shown to
    be far from one: greedy choices by the gap between the two largest scores, sampled ones
    by how far the row's uniform number fell from a token boundary of the cumulative
    distribution (see ``PerRowSampling``). Rows that have already ended are not counted.
    """

    greedy: list[float] = field(default_factory=list)  # top-1 minus top-2 score (logits)
    sampled: list[float] = field(default_factory=list)  # distance to a boundary (probability)

    def assert_clear(self, logits: float = 1e-3, probability: float = 1e-4) -> None:
        """Every choice recorded was at least ``logits`` / ``probability`` from flipping.

        The defaults are a hundred times the float noise between batch shapes of the tiny
        Llamas here (2e-6 in the logits); a larger model states its own."""
        assert self.greedy or self.sampled, "no token choice was recorded"
        assert min(self.greedy, default=math.inf) > logits, min(self.greedy)
        assert min(self.sampled, default=math.inf) > probability, min(self.sampled)


class _RecordMargins(LogitsProcessor):
    """Records the margins of a step's choices in rows still running; changes nothing."""

    def __init__(
        self, draw: PerRowSampling | None, eos: Sequence[int], margins: TokenMargins
    ) -> None:
        self.draw = draw
        self.eos = torch.tensor(list(eos))
        self.margins = margins
        self.prompt_length: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prompt_length is None:
            self.prompt_length = input_ids.shape[1]
        new = input_ids[:, self.prompt_length :].cpu()
        running = ~torch.isin(new, self.eos).any(dim=1)
        values = scores.float()[running.to(scores.device)]
        if self.draw is None:  # greedy: the argmax of the scores
            top = values.topk(2, dim=-1).values
            self.margins.greedy += (top[:, 0] - top[:, 1]).tolist()
            return scores
        # The uniform numbers the draw is about to take, from copies of its generators.
        u = torch.cat(
            [
                torch.rand(1, generator=torch.Generator(g.device).set_state(g.get_state()))
                for g in self.draw.generators
            ]
        ).to(values.device)[running.to(values.device)]
        cdf = torch.softmax(values, dim=-1).cumsum(dim=-1)
        cdf = cdf / cdf[:, -1:]
        self.margins.sampled += (cdf - u[:, None]).abs().amin(dim=-1).tolist()
        return scores


@contextlib.contextmanager
def greedy_gaps(output_layer: torch.nn.Module) -> Iterator[list[float]]:
    """Inside: the gap between the two largest logits at the last position of every row,
    each time ``output_layer`` (a model's LM head) runs: how far each greedy choice of a
    plain ``model.generate`` was from a tie (rows already ended included)."""
    gaps: list[float] = []

    def record(module: torch.nn.Module, inputs: object, logits: torch.Tensor) -> None:
        top = logits[:, -1].float().topk(2, dim=-1).values
        gaps.extend((top[:, 0] - top[:, 1]).tolist())

    handle = output_layer.register_forward_hook(record)
    try:
        yield gaps
    finally:
        handle.remove()


def batch_noise(generator: CausalLMGenerator, prompts: Sequence[str]) -> tuple[float, float]:
    """The float noise batching adds, measured: the largest difference between the
    next-token logits of ``prompts`` in one left-padded batch and each prompt alone, and
    the largest difference of their cumulative distributions."""
    texts = [generator.format_prompt(p) for p in prompts]
    model = generator.model
    with torch.inference_mode():
        together = model(**generator._encode(texts)).logits[:, -1].float()
        alone = torch.cat([model(**generator._encode([t])).logits[:, -1].float() for t in texts])
    cdf = torch.softmax(together, -1).cumsum(-1) - torch.softmax(alone, -1).cumsum(-1)
    return float((together - alone).abs().max()), float(cdf.abs().max())


@contextlib.contextmanager
def token_margins() -> Iterator[TokenMargins]:
    """Inside: every ``CausalLMGenerator`` call records its token choices' margins."""
    from utilgen.generate import causal_lm
    from utilgen.generate.causal_lm_sampling import PerRowSampling

    margins = TokenMargins()
    real_processors = causal_lm.sampling_processors
    real_batch = causal_lm.CausalLMGenerator._complete_batch
    eos: list[int] = []

    def complete_batch(self: CausalLMGenerator, *args: Any, **kwargs: Any) -> Any:
        eos[:] = self.eos_token_ids
        return real_batch(self, *args, **kwargs)

    def processors(*args: Any, **kwargs: Any) -> LogitsProcessorList:
        found = real_processors(*args, **kwargs)
        last = found[-1] if found else None
        draw = last if isinstance(last, PerRowSampling) else None
        found.insert(len(found) - (draw is not None), _RecordMargins(draw, eos, margins))
        return found

    causal_lm.sampling_processors = processors  # type: ignore[assignment]
    causal_lm.CausalLMGenerator._complete_batch = complete_batch  # type: ignore[method-assign]
    try:
        yield margins
    finally:
        causal_lm.sampling_processors = real_processors
        causal_lm.CausalLMGenerator._complete_batch = real_batch  # type: ignore[method-assign]


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
    from utilgen.generate.causal_lm import CausalLMGenerator
    from utilgen.generate.causal_lm_sampling import SamplingSettings

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
