"""pdserve: service-oriented LLM inference with PD fusion and PD disaggregation."""

from pdserve.types import FinishReason, Request, SamplingParams, TokenEvent

__all__ = ["FinishReason", "Request", "SamplingParams", "TokenEvent", "LLM"]


def __getattr__(name: str):
    # LLM pulls in torch; keep `import pdserve` cheap for the torch-free rooms.
    if name == "LLM":
        from pdserve.engine.llm import LLM

        return LLM
    raise AttributeError(name)
