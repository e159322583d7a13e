"""Request bodies of the OpenAI-compatible routes, as OpenAI names them. Nothing a client asks
for is silently ignored: a field OpenAI does not define for the route is a 400 naming it (as
OpenAI answers it); a parameter OpenAI defines but this platform does not honour
(`presence_penalty`, `tools`, `response_format`, `best_of`...) is accepted only at the value that
changes nothing (its default, or null: clients that spell out defaults keep working) and is a 400
naming it otherwise; values out of range are a 400 with the field named. `user` is an identifier
for OpenAI's abuse monitoring: accepted, changes no output. Sizes that depend on settings
(messages, characters, inputs) are checked by the services."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from service.errors import InvalidInput
from workers.contract.generation import GenParams

MAX_MODEL_CHARS = 256
Name = Annotated[str, Field(min_length=1, max_length=MAX_MODEL_CHARS)]


# OpenAI's parameters this platform does not honour: the values each is accepted at (besides
# null), the ones that change nothing
_PENALTIES: dict[str, tuple[object, ...]] = {
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "logit_bias": ({},),
}
_CHAT_UNHONOURED: dict[str, tuple[object, ...]] = {
    **_PENALTIES,
    "response_format": ({"type": "text"},),
    "tools": ([],),
    "tool_choice": ("none",),
    "parallel_tool_calls": (True,),
    "functions": ([],),
    "function_call": ("none",),
    "store": (False,),
    "metadata": ({},),
    "service_tier": ("auto", "default"),
    "modalities": (["text"],),
    "audio": (),
    "prediction": (),
    "reasoning_effort": (),
    "verbosity": (),
    "web_search_options": (),
}
_COMPLETION_UNHONOURED: dict[str, tuple[object, ...]] = {**_PENALTIES, "best_of": (1,)}


def _same(value: object, default: object) -> bool:
    """JSON equality that tells `false` from `0` (Python's `False == 0` does not)."""
    if isinstance(value, bool) or isinstance(default, bool):
        return value is default
    return value == default


def unhonoured(name: str, value: object, accepted: tuple[object, ...]) -> str | None:
    """Why `value` of a parameter this platform does not honour is refused (None: it changes
    nothing, so it is accepted)."""
    if value is None or any(_same(value, a) for a in accepted):
        return None
    allowed = " or ".join(["null", *(json.dumps(a) for a in accepted)])
    return f"{name} is not supported (accepted only as {allowed}, which changes nothing)"


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Request(_Body):
    """A route's whole body: unknown fields refused, unhonoured parameters checked and dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    UNHONOURED: ClassVar[Mapping[str, tuple[object, ...]]] = {}

    @model_validator(mode="before")
    @classmethod
    def _refuse_unhonoured(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not cls.UNHONOURED:
            return data
        for name, accepted in cls.UNHONOURED.items():
            if name in data:
                reason = unhonoured(name, data[name], accepted)
                if reason is not None:
                    context = {"param": name, "reason": reason}
                    raise PydanticCustomError("unsupported_parameter", "{reason}", context)
        return {k: v for k, v in data.items() if k not in cls.UNHONOURED}


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Request):
    model: Name
    max_tokens: int | None = Field(default=None, ge=1, le=10**6)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0, le=10**6)  # an extension (vLLM's)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=8)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # an end-user identifier (OpenAI's abuse monitoring): changes no output

    def params(self, max_tokens: int | None, logprobs: int | None) -> GenParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        params = GenParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k or 0,
            seed=self.seed,
            stop=stop,
            n=self.n,
            logprobs=logprobs,
        )
        try:
            params.check()
        except ValueError as exc:
            # each message starts with the parameter's name
            raise InvalidInput(str(exc), param=str(exc).partition(" ")[0] or None) from exc
        return params

    @property
    def include_usage(self) -> bool:
        return self.stream and self.stream_options is not None and self.stream_options.include_usage


class ChatRequest(_Sampling):
    UNHONOURED = _CHAT_UNHONOURED

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=10**6)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    def gen_params(self) -> GenParams:
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidInput("top_logprobs needs logprobs: true", param="top_logprobs")
        wanted = (self.top_logprobs or 0) if self.logprobs else None
        return self.params(self.max_completion_tokens or self.max_tokens, wanted)


class CompletionRequest(_Sampling):
    UNHONOURED = _COMPLETION_UNHONOURED

    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _one_text(cls, value: object) -> object:
        if isinstance(value, list):
            if value and not isinstance(value[0], str):
                raise ValueError("token arrays are not supported: send the prompt as a string")
            if len(value) != 1:
                raise ValueError("send one prompt as a string (a list of prompts is not supported)")
        return value

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else str(self.prompt[0])

    def gen_params(self) -> GenParams:
        if self.echo:
            raise InvalidInput("echo is not supported", param="echo")
        if self.suffix:
            raise InvalidInput("suffix is not supported", param="suffix")
        return self.params(self.max_tokens or 16, self.logprobs)  # OpenAI's default: 16


class EmbeddingRequest(_Request):
    model: Name
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, le=1 << 20)
    user: str | None = None

    def texts(self) -> list[str]:
        if isinstance(self.input, str):
            return [self.input]
        if not self.input:
            raise InvalidInput("input must not be empty", param="input")
        if not all(isinstance(x, str) for x in self.input):
            raise InvalidInput(
                "token arrays are not supported: send input as a string or strings", param="input"
            )
        return [str(x) for x in self.input]


B = TypeVar("B", bound=BaseModel)


def parse(kind: type[B], body: bytes) -> B:
    """The body as `kind`, or InvalidInput naming the first bad field (its `param`)."""
    try:
        return kind.model_validate_json(body)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(x) for x in err.get("loc", ()))
        kind_of = err.get("type")
        if kind_of == "json_invalid":
            raise InvalidInput("the body is not valid JSON") from exc
        if kind_of == "unsupported_parameter":
            raise InvalidInput(str(err["msg"]), param=str(err.get("ctx", {}).get("param"))) from exc
        if kind_of == "extra_forbidden":  # OpenAI's own words for a field it does not define
            raise InvalidInput(f"unrecognized request argument supplied: {loc}", param=loc) from exc
        msg = str(err.get("msg", "invalid"))
        raise InvalidInput(f"{loc}: {msg}" if loc else msg, param=loc or None) from exc
