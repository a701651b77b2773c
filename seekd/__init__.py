"""seekd: DeepSeek-family models on your own hardware behind an OpenAI-compatible API."""

from seekd.sampling_params import SamplingParams, StructuredOutputParams

__version__ = "0.1.0"

__all__ = ["LLM", "SamplingParams", "StructuredOutputParams", "__version__"]


def __getattr__(name: str):
    if name == "LLM":  # imported lazily: the server process never loads torch through this
        from seekd.engine.llm import LLM

        return LLM
    raise AttributeError(name)
