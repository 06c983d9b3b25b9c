"""OpenAI API request bodies (pydantic). Bounds live here so the OpenAPI schema states them and
a bad value is refused with 400 naming the parameter before anything reaches the engine."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, WrapValidator

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_N = 128  # choices per request
MAX_STOP = 16  # stop strings per request

TokenId = Annotated[int, Field(ge=0, le=INT64_MAX)]
Seed = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
_INT = {int}


def _token_ids_first(value, handler):
    """A prompt's common shape, a non-empty list of plain ints within TokenId's bounds, is what
    the union's list[TokenId] member returns: checked by three C loops instead of pydantic's
    smart union, which first tries list[str] and collects an error per token. Anything else,
    and every invalid value with its error, goes through the union as declared."""
    if (type(value) is list and value and set(map(type, value)) == _INT
            and min(value) >= 0 and max(value) <= INT64_MAX):  # fmt: skip
        return value
    return handler(value)


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    """Parameters shared by completions and chat completions."""

    model_config = ConfigDict(extra="allow")  # unknown fields are ignored, as OpenAI does

    model: str
    max_tokens: int | None = Field(default=None, ge=0, le=INT64_MAX)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1, le=INT64_MAX)
    min_p: float | None = Field(default=None, ge=0, le=1)
    seed: Seed | None = None
    stop: str | list[str] | None = Field(default=None, max_length=MAX_STOP)
    stop_token_ids: list[TokenId] | None = Field(default=None, max_length=256)
    n: int = Field(default=1, ge=1, le=MAX_N)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    repetition_penalty: float | None = Field(default=None, gt=0, le=100)
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0, le=INT64_MAX)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None


class CompletionRequest(_Sampling):
    prompt: Annotated[
        str | list[str] | list[TokenId] | list[list[TokenId]], WrapValidator(_token_ids_first)
    ] = Field(description="text, a list of texts, token ids, or a list of token id lists")
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    suffix: None = None  # not supported: only null is accepted


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0, le=INT64_MAX)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    add_generation_prompt: bool = True


class TokenizeRequest(BaseModel):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class DetokenizeRequest(BaseModel):
    model: str | None = None
    tokens: list[TokenId]
