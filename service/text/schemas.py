"""Request bodies of the OpenAI-compatible routes, as OpenAI names them. Unknown fields are
ignored (as OpenAI does); values out of range are a 400 with the field named. Sizes that depend
on settings (messages, characters, inputs) are checked by the services."""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from service.errors import InvalidInput
from workers.contract.generation import GenParams

MAX_MODEL_CHARS = 256
Name = Annotated[str, Field(min_length=1, max_length=MAX_MODEL_CHARS)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


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


class _Sampling(_Body):
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
    user: str | None = None  # accepted and ignored

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
            raise InvalidInput(str(exc)) from exc
        return params

    @property
    def include_usage(self) -> bool:
        return self.stream and self.stream_options is not None and self.stream_options.include_usage


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=10**6)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    def gen_params(self) -> GenParams:
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidInput("top_logprobs needs logprobs: true")
        wanted = (self.top_logprobs or 0) if self.logprobs else None
        return self.params(self.max_completion_tokens or self.max_tokens, wanted)


class CompletionRequest(_Sampling):
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
            raise InvalidInput("echo is not supported")
        if self.suffix:
            raise InvalidInput("suffix is not supported")
        return self.params(self.max_tokens or 16, self.logprobs)  # OpenAI's default: 16


class EmbeddingRequest(_Body):
    model: Name
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, le=1 << 20)
    user: str | None = None

    def texts(self) -> list[str]:
        if isinstance(self.input, str):
            return [self.input]
        if not self.input:
            raise InvalidInput("input must not be empty")
        if not all(isinstance(x, str) for x in self.input):
            raise InvalidInput("token arrays are not supported: send input as a string or strings")
        return [str(x) for x in self.input]


B = TypeVar("B", bound=BaseModel)


def parse(kind: type[B], body: bytes) -> B:
    """The body as `kind`, or InvalidInput naming the first bad field."""
    try:
        return kind.model_validate_json(body)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(x) for x in err.get("loc", ()))
        if err.get("type") == "json_invalid":
            raise InvalidInput("the body is not valid JSON") from exc
        msg = str(err.get("msg", "invalid"))
        raise InvalidInput(f"{loc}: {msg}" if loc else msg) from exc
