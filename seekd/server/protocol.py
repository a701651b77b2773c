"""Pydantic models of the OpenAI API subset seekd speaks.

Requests allow unknown fields (clients send `user`, `store`, `metadata`, ...) and ignore them;
known fields are range-checked here so that bad values become 400s before any work is done.
Extra, vLLM-style sampling fields (`top_k`, `min_p`, `repetition_penalty`, `stop_token_ids`,
`ignore_eos`, ...) are accepted too; the openai client sends them through `extra_body`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

# JSON integers are unbounded; past these bounds a value could only overflow (msgpack, torch seeds)
# deeper in the stack, so it is refused here as a 400.
MAX_COUNT = 2**31 - 1
TokenId = Annotated[int, Field(ge=0, le=MAX_COUNT)]
MAX_STOP_TOKEN_IDS = 1024

# -- requests ----------------------------------------------------------------------------------


def _null_means_default(cls: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """OpenAI's spec declares some fields nullable, null meaning the default, and clients generated
    from it send null for every field left unset; handlers see the default."""
    return cls.model_fields[info.field_name].default if value is None else value


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class SamplingFields(BaseModel):
    """Fields shared by chat and completions requests."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    n: int | None = Field(1, ge=1, le=MAX_COUNT)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1, le=MAX_COUNT)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)  # each choice i uses seed + i
    max_tokens: int | None = Field(None, ge=1, le=MAX_COUNT)
    min_tokens: int = Field(0, ge=0, le=MAX_COUNT)
    stop: str | list[str] | None = None
    # a few special tokens are what it is for; the engine scans it for every token of every choice
    stop_token_ids: list[TokenId] | None = Field(None, max_length=MAX_STOP_TOKEN_IDS)
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logit_bias: dict[str, float] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # seekd: lower = served first (as in the engine); queued by class, then fairly
    priority: int = Field(0, ge=-MAX_COUNT, le=MAX_COUNT)
    timeout: float | None = Field(None, gt=0)  # seekd: seconds until the request is aborted (408)
    cache_salt: str | None = Field(None, max_length=256)  # narrows prefix-cache sharing (within the tenant)

    _nullable = field_validator("n", "stream")(_null_means_default)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[TextPart] | None = None
    name: str | None = None


class ThinkingOption(BaseModel):
    """DeepSeek's API: `"thinking": {"type": "enabled"}` switches thinking mode on for V3.2/V4 models."""

    model_config = ConfigDict(extra="allow")
    type: Literal["enabled", "disabled"]


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    thinking: ThinkingOption | bool | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_COUNT)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    add_generation_prompt: bool = True
    chat_template_kwargs: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = None  # the legacy form of tools (seekd.server.legacy_functions)
    function_call: Any = None  # the legacy form of tool_choice
    modalities: list[str] | None = None  # only ["text"]: seekd generates no audio
    audio: dict[str, Any] | None = None  # audio output parameters: refused, as modalities with "audio"
    # seekd: passages from these knowledge bases of the caller's tenant go into the prompt (README
    # "Knowledge bases"); unset = the tenant's defaults (kb_defaults), [] = none
    knowledge_bases: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(None, max_length=16)
    web_search: bool = False  # seekd: also search the web, where the tenant is allowed to

    _nullable_chat = field_validator("logprobs")(_null_means_default)

    @field_validator("modalities")
    @classmethod
    def _text_only(cls, modalities: list[str] | None) -> list[str] | None:
        """Asking for audio and getting text alone would be silently wrong: a 400 instead."""
        if modalities is not None and set(modalities) - {"text"}:
            raise ValueError(f"seekd generates text only; {sorted(set(modalities) - {'text'})} is not supported")
        return modalities

    @field_validator("audio")
    @classmethod
    def _no_audio(cls, audio: dict[str, Any] | None) -> dict[str, Any] | None:
        if audio is not None:
            raise ValueError("audio output is not supported: seekd generates text only")
        return audio

    def template_kwargs(self) -> dict[str, Any]:
        """chat_template_kwargs plus the request-level thinking options (these win when both are set)."""
        kwargs = dict(self.chat_template_kwargs or {})
        if isinstance(self.thinking, ThinkingOption):
            kwargs["thinking"] = self.thinking.type == "enabled"
        elif self.thinking is not None:
            kwargs["thinking"] = self.thinking
        if self.reasoning_effort is not None:
            kwargs["reasoning_effort"] = self.reasoning_effort
        return kwargs


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[TokenId] | list[list[TokenId]]
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool | None = False
    best_of: int | None = Field(None, ge=1, le=MAX_COUNT)
    suffix: str | None = None
    response_format: dict[str, Any] | None = None  # seekd (as vLLM): json_object / json_schema on completions

    _nullable_completion = field_validator("echo")(_null_means_default)


# -- responses ---------------------------------------------------------------------------------


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0  # chat: tokens of the <think> block, its closing tag included


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None = None


class CompletionLogprobs(BaseModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class FunctionCall(BaseModel):
    name: str
    arguments: str  # JSON text


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class DeltaFunctionCall(BaseModel):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(BaseModel):
    """A piece of one call: id, type and name come with its first piece, arguments in pieces."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallOut] | None = None
    function_call: FunctionCall | None = None  # only for a request in the legacy `functions` form


class ChatChoice(BaseModel):
    index: int
    message: ResponseMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class Citation(BaseModel):
    """seekd: a passage the answer was given, numbered as in its text ([1], [2], ...)."""

    index: int
    source: Literal["knowledge_base", "web"]
    knowledge_base: str | None = None
    document: str  # the document's name in its knowledge base, or the web page's title
    chunk: int  # the passage's position in its document (0-based)
    score: float
    text: str
    url: str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None
    citations: list[Citation] | None = None  # seekd: with knowledge_bases or web_search


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None
    function_call: DeltaFunctionCall | None = None  # only for a request in the legacy `functions` form


class ChatChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    citations: list[Citation] | None = None  # seekd: on the first chunk, with knowledge_bases or web_search


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "seekd"
    max_model_len: int | None = None
    quantization: str | None = None  # --quantization as given
    precision: str | None = None  # the weight precision it loads: "awq int4 (groups of 128)", "bfloat16", ...
    parent: str | None = None  # a LoRA adapter's base model


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# -- embeddings --------------------------------------------------------------------------------

MAX_EMBEDDING_INPUTS = 2048  # OpenAI's bound on one request's array


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    # token-id arrays (what tiktoken-based clients send) cannot be read by another model's tokenizer
    input: str | list[str] = Field(union_mode="left_to_right")
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, le=MAX_COUNT)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _bounded(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not 1 <= len(value) <= MAX_EMBEDDING_INPUTS:
            raise ValueError(f"input must hold 1 to {MAX_EMBEDDING_INPUTS} strings")
        return value


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # str: base64 of little-endian float32


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
