"""The bundled model catalogue: context windows, output limits, the 1M-context beta and prices.

Pure data and lookups (no I/O, nothing fetched at start).  It feeds ``/v1/models``
(``context_window`` / ``max_output_tokens``), the clamping of ``max_tokens`` to what a model
can produce, the Factory preset's ``anthropic-beta: context-1m-2025-08-07`` (only for models
marked ``context_1m``) and, through `price_for`, the usage ledger's costs.

Lookups are tolerant of the ways a model is spelled across providers, so one entry serves
them all: a ``vendor/`` prefix (OpenRouter), a date suffix (``-20250929``, ``-2025-08-07``,
Vertex's ``@20250514``), ``-latest``, Bedrock ids (``anthropic.claude-...-v1:0``, region
prefixes), Factory's ``bedrock-`` / ``vertex-`` prefixes, ``:tag`` suffixes (Ollama,
OpenRouter's ``:free``) and dotted Claude versions (``claude-sonnet-4.5``).

Numbers are the providers' published limits and list prices (USD per million tokens) as of
late 2025; prices change, so treat them as defaults (the config's ``[[price]]`` tables come
first in the ledger).  Entries whose price is not public (Factory's alpha models) have
``price = None``; their limits are those of the family they belong to.
"""
from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

from attrs import frozen

#: the beta header value that turns on the 1M-token context window (Sonnet 4 / 4.5)
CONTEXT_1M_BETA = "context-1m-2025-08-07"
CONTEXT_1M = 1_000_000


@frozen
class Price:
    """USD per million tokens.  ``cached_input``: cache reads; ``cache_write``: cache writes
    (Anthropic's 5-minute rate); None means "not published" (bill as ``input``)."""

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None


@frozen
class ModelInfo:
    """What the gateway knows about one model.

    ``context_window`` is the standard window; ``context_1m`` marks models that get a
    1,000,000-token window with the `CONTEXT_1M_BETA` header (`window` tells which applies).
    """

    id: str
    owner: str
    context_window: int | None
    max_output: int | None
    price: Price | None = None
    context_1m: bool = False
    aliases: tuple[str, ...] = ()

    def window(self, beta_1m: bool = False) -> int | None:
        """The context window, 1M when the beta is sent and the model supports it."""
        return CONTEXT_1M if beta_1m and self.context_1m else self.context_window


def _m(id: str, owner: str, ctx: int | None, out: int | None, price: tuple[float, ...] | None = None,
       *, c1m: bool = False, aliases: tuple[str, ...] = ()) -> ModelInfo:
    return ModelInfo(id, owner, ctx, out, Price(*price) if price else None, c1m, aliases)


_CLAUDE_45 = (3.0, 15.0, 0.30, 3.75)
_OPUS = (15.0, 75.0, 1.50, 18.75)
_GPT5 = (1.25, 10.0, 0.125)

#: Most specific first within a family: the dateless alias of the first entry wins.
MODELS: tuple[ModelInfo, ...] = (
    # ---------------------------------------------------------------- Anthropic
    _m("claude-sonnet-4-5-20250929", "anthropic", 200_000, 64_000, _CLAUDE_45, c1m=True),
    _m("claude-sonnet-4-20250514", "anthropic", 200_000, 64_000, _CLAUDE_45, c1m=True,
       aliases=("claude-4-sonnet",)),
    _m("claude-opus-4-1-20250805", "anthropic", 200_000, 32_000, _OPUS),
    _m("claude-opus-4-20250514", "anthropic", 200_000, 32_000, _OPUS, aliases=("claude-4-opus",)),
    _m("claude-opus-4-5-20251101", "anthropic", 200_000, 64_000, (5.0, 25.0, 0.50, 6.25)),
    _m("claude-haiku-4-5-20251001", "anthropic", 200_000, 64_000, (1.0, 5.0, 0.10, 1.25)),
    _m("claude-3-7-sonnet-20250219", "anthropic", 200_000, 64_000, _CLAUDE_45),
    _m("claude-3-5-sonnet-20241022", "anthropic", 200_000, 8_192, _CLAUDE_45),
    _m("claude-3-5-sonnet-20240620", "anthropic", 200_000, 8_192, _CLAUDE_45),
    _m("claude-3-5-haiku-20241022", "anthropic", 200_000, 8_192, (0.80, 4.0, 0.08, 1.0)),
    _m("claude-3-opus-20240229", "anthropic", 200_000, 4_096, _OPUS),
    _m("claude-3-haiku-20240307", "anthropic", 200_000, 4_096, (0.25, 1.25, 0.03, 0.30),
       aliases=("anthropic.claude-3-haiku-20240307-v1:0",)),
    # ---------------------------------------------------------------- OpenAI
    _m("gpt-5-2025-08-07", "openai", 400_000, 128_000, _GPT5),
    _m("gpt-5-mini-2025-08-07", "openai", 400_000, 128_000, (0.25, 2.0, 0.025)),
    _m("gpt-5-nano-2025-08-07", "openai", 400_000, 128_000, (0.05, 0.40, 0.005)),
    _m("gpt-5-codex", "openai", 400_000, 128_000, _GPT5),
    _m("gpt-5-chat-latest", "openai", 128_000, 16_384, _GPT5),
    _m("gpt-5-pro-2025-10-06", "openai", 400_000, 272_000, (15.0, 120.0)),
    _m("gpt-5.1-2025-11-13", "openai", 400_000, 128_000, _GPT5),
    _m("gpt-5.1-codex", "openai", 400_000, 128_000, _GPT5),
    _m("gpt-5.1-codex-mini", "openai", 400_000, 128_000, (0.25, 2.0, 0.025)),
    _m("gpt-5-reasoning-alpha-2025-07-17", "openai", 400_000, 128_000),
    _m("nectarine-alpha-2025-07-24", "openai", 400_000, 128_000),
    _m("nectarine-alpha-new-reasoning-effort-2025-07-25", "openai", 400_000, 128_000),
    _m("gpt-4.1-2025-04-14", "openai", 1_047_576, 32_768, (2.0, 8.0, 0.50)),
    _m("gpt-4.1-mini-2025-04-14", "openai", 1_047_576, 32_768, (0.40, 1.60, 0.10)),
    _m("gpt-4.1-nano-2025-04-14", "openai", 1_047_576, 32_768, (0.10, 0.40, 0.025)),
    _m("gpt-4o-2024-08-06", "openai", 128_000, 16_384, (2.50, 10.0, 1.25)),
    _m("gpt-4o-2024-11-20", "openai", 128_000, 16_384, (2.50, 10.0, 1.25)),
    _m("gpt-4o-2024-05-13", "openai", 128_000, 4_096, (5.0, 15.0)),
    _m("gpt-4o-mini-2024-07-18", "openai", 128_000, 16_384, (0.15, 0.60, 0.075)),
    _m("chatgpt-4o-latest", "openai", 128_000, 16_384, (5.0, 15.0)),
    _m("o1-2024-12-17", "openai", 200_000, 100_000, (15.0, 60.0, 7.50)),
    _m("o1-mini-2024-09-12", "openai", 128_000, 65_536, (1.10, 4.40, 0.55)),
    _m("o1-pro-2025-03-19", "openai", 200_000, 100_000, (150.0, 600.0)),
    _m("o3-2025-04-16", "openai", 200_000, 100_000, (2.0, 8.0, 0.50)),
    _m("o3-mini-2025-01-31", "openai", 200_000, 100_000, (1.10, 4.40, 0.55)),
    _m("o3-pro-2025-06-10", "openai", 200_000, 100_000, (20.0, 80.0)),
    _m("o4-mini-2025-04-16", "openai", 200_000, 100_000, (1.10, 4.40, 0.275)),
    _m("o4-mini-alpha-2025-07-11", "openai", 200_000, 100_000),
    _m("codex-mini-latest", "openai", 200_000, 100_000, (1.50, 6.0, 0.375)),
    _m("text-embedding-3-small", "openai", 8_191, None, (0.02, 0.0)),
    _m("text-embedding-3-large", "openai", 8_191, None, (0.13, 0.0)),
    # ---------------------------------------------------------------- Google
    _m("gemini-2.5-pro", "google", 1_048_576, 65_536, (1.25, 10.0, 0.125)),
    _m("gemini-2.5-flash", "google", 1_048_576, 65_536, (0.30, 2.50, 0.03)),
    _m("gemini-2.5-flash-lite", "google", 1_048_576, 65_536, (0.10, 0.40, 0.01)),
    _m("gemini-2.0-flash", "google", 1_048_576, 8_192, (0.10, 0.40, 0.025)),
    _m("gemini-2.0-flash-lite", "google", 1_048_576, 8_192, (0.075, 0.30)),
    _m("gemini-3-pro-preview", "google", 1_048_576, 65_536, (2.0, 12.0, 0.20)),
    # ---------------------------------------------------------------- DeepSeek (V3.2 prices)
    _m("deepseek-chat", "deepseek", 128_000, 8_192, (0.28, 0.42, 0.028)),
    _m("deepseek-reasoner", "deepseek", 128_000, 64_000, (0.28, 0.42, 0.028)),
    # ---------------------------------------------------------------- xAI (output bounded by the window)
    _m("grok-4-0709", "xai", 256_000, 256_000, (3.0, 15.0, 0.75), aliases=("grok-4",)),
    _m("grok-4-fast-reasoning", "xai", 2_000_000, 2_000_000, (0.20, 0.50, 0.05)),
    _m("grok-4-fast-non-reasoning", "xai", 2_000_000, 2_000_000, (0.20, 0.50, 0.05)),
    _m("grok-code-fast-1", "xai", 256_000, 256_000, (0.20, 1.50, 0.02)),
    _m("grok-3", "xai", 131_072, 131_072, (3.0, 15.0, 0.75)),
    _m("grok-3-mini", "xai", 131_072, 131_072, (0.30, 0.50, 0.075)),
    # ---------------------------------------------------------------- Zhipu GLM
    _m("glm-4.6", "zhipu", 200_000, 128_000, (0.60, 2.20, 0.11), aliases=("glm-4-6",)),
    _m("glm-4.5", "zhipu", 128_000, 96_000, (0.60, 2.20, 0.11)),
    _m("glm-4.5-air", "zhipu", 128_000, 96_000, (0.20, 1.10, 0.03)),
    # ---------------------------------------------------------------- Moonshot Kimi
    _m("kimi-k2-0905-preview", "moonshot", 262_144, 262_144, (0.60, 2.50, 0.15), aliases=("kimi-k2",)),
    _m("kimi-k2-0711-preview", "moonshot", 131_072, 131_072, (0.60, 2.50, 0.15)),
    _m("kimi-k2-turbo-preview", "moonshot", 262_144, 262_144, (1.15, 8.0, 0.15)),
    _m("kimi-k2-thinking", "moonshot", 262_144, 262_144, (0.60, 2.50, 0.15)),
    # ---------------------------------------------------------------- MiniMax
    _m("MiniMax-M2", "minimax", 204_800, 128_000, (0.30, 1.20, 0.03)),
)

#: Factory's models list, spelled as Factory takes them (each one has an entry above).
FACTORY_MODELS: tuple[str, ...] = (
    "claude-3-5-sonnet-20241022", "claude-3-5-haiku-20241022", "anthropic.claude-3-haiku-20240307-v1:0",
    "claude-3-7-sonnet-20250219", "claude-sonnet-4-20250514", "claude-sonnet-4-5-20250929",
    "claude-opus-4-1-20250805", "gemini-2.5-flash", "gemini-2.5-pro", "o1", "o3", "o4-mini",
    "o4-mini-alpha-2025-07-11", "gpt-4o", "gpt-4.1", "gpt-5-2025-08-07", "gpt-5-mini-2025-08-07",
    "gpt-5-nano-2025-08-07", "gpt-5-codex", "gpt-5-reasoning-alpha-2025-07-17", "nectarine-alpha-2025-07-24",
    "nectarine-alpha-new-reasoning-effort-2025-07-25", "grok-4", "glm-4.6",
)

_DATE = re.compile(r"(?:[-@](?:\d{8}|\d{4}-\d{2}-\d{2}|\d{4}))$")
_LATEST = re.compile(r"-latest$")
_BEDROCK_ID = re.compile(r"^(?:[a-z]{2,4}\.)?anthropic\.(?P<m>.+?)(?:-v\d+(?::\d+)?)?$")
_PROVIDER_PREFIX = re.compile(r"^(?:bedrock|vertex)[-_:]?", re.I)
_CLAUDE_DOT = re.compile(r"(?<=\d)\.(?=\d)")


def _base(name: str) -> str:
    """``name`` without its date suffix (``-20250929``, ``-2025-08-07``, ``@20250514``)."""
    return _DATE.sub("", name)


def _index(models: Iterable[ModelInfo]) -> dict[str, ModelInfo]:
    out: dict[str, ModelInfo] = {}
    for m in models:
        for name in (m.id, *m.aliases):
            out.setdefault(name.lower(), m)
    for m in models:  # dateless aliases after every exact id, first one wins
        for name in (m.id, *m.aliases):
            out.setdefault(_base(name.lower()), m)
    return out


_BY_NAME = _index(MODELS)
_cache: dict[str, ModelInfo | None] = {}


def _candidates(model: str) -> list[str]:
    """Spellings of ``model`` to try, from the most to the least literal."""
    name = model.strip().lower()
    out = [name]
    if "/" in name:
        name = name.rsplit("/", 1)[-1]
        out.append(name)
    if ":" in name and not name.startswith(("bedrock", "vertex")) and "anthropic." not in name:
        name = name.split(":", 1)[0]
        out.append(name)
    m = _BEDROCK_ID.match(name)
    if m:
        name = m.group("m")
        out.append(name)
    stripped = _PROVIDER_PREFIX.sub("", name, count=1)
    if stripped != name and stripped:
        name = stripped
        out.append(name)
    if name.startswith("claude"):
        dashed = _CLAUDE_DOT.sub("-", name)
        if dashed != name:
            name = dashed
            out.append(name)
    for n in list(out):
        out.append(_LATEST.sub("", n))
        out.append(_base(n))
    return out


def info_for(model: str | None) -> ModelInfo | None:
    """The catalogue entry for ``model`` (tolerant of date suffixes and prefixes), or None."""
    if not model:
        return None
    if model in _cache:
        return _cache[model]
    found = None
    for candidate in _candidates(model):
        found = _BY_NAME.get(candidate)
        if found is not None:
            break
    if len(_cache) < 10_000:
        _cache[model] = found
    return found


def price_for(model: str | None) -> Price | None:
    """List price of ``model`` in USD per million input / output / cached-input tokens, or None."""
    info = info_for(model)
    return info.price if info is not None else None


def max_output_for(model: str | None) -> int | None:
    """The most output tokens ``model`` can produce in one answer, when known."""
    info = info_for(model)
    return info.max_output if info is not None else None


def supports_1m(model: str | None) -> bool:
    """True when the 1M-context beta applies to ``model`` (Claude Sonnet 4 / 4.5)."""
    info = info_for(model)
    return info is not None and info.context_1m


def factory_ids(globs: Iterable[str] = ("*",)) -> list[str]:
    """Ids of the Factory models list that match any of ``globs`` (for ``/v1/models``)."""
    pats = list(globs)
    return [m for m in FACTORY_MODELS if any(fnmatch.fnmatchcase(m, g) for g in pats)]
