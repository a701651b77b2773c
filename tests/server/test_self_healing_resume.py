"""What an engine restart relies on: a request resubmitted to a fresh engine as prompt + the tokens
it had produced (`resume_output_token_ids`) continues exactly where it stopped — seeded noise,
penalties and max_tokens count from the tokens already produced."""

from __future__ import annotations

from seekd.engine.engine_core import EngineCore
from seekd.engine.llm import LLM
from seekd.engine.request import EngineCoreRequest
from seekd.sampling_params import SamplingParams


def run_to_end(engine: EngineCore, request: EngineCoreRequest) -> tuple[list[int], str | None]:
    engine.add_request(request)
    tokens: list[int] = []
    reason = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens += out.new_token_ids
            reason = out.finish_reason or reason
    return tokens, reason


def test_resumed_request_continues_seeded_penalized_output_exactly(qwen2_model, data_dir) -> None:
    engine = LLM(
        str(qwen2_model[0]), data_dir=str(data_dir), num_kv_blocks=64, block_size=8, show_progress=False
    ).engine
    params = SamplingParams(
        temperature=0.9,
        seed=7,
        max_tokens=24,
        ignore_eos=True,
        frequency_penalty=0.7,
        presence_penalty=0.3,
        repetition_penalty=1.2,
        min_tokens=20,
        stop_token_ids=[5],
    )
    prompt = [3, 14, 15, 92, 65, 35, 89, 79]
    full, reason = run_to_end(
        engine, EngineCoreRequest(request_id="a", prompt_token_ids=prompt, sampling_params=params)
    )
    assert reason == "length" and len(full) == 24

    produced = full[:10]
    rest, reason = run_to_end(
        engine,
        EngineCoreRequest(
            request_id="a-resumed",
            prompt_token_ids=prompt,
            sampling_params=params,
            resume_output_token_ids=produced,
        ),
    )
    assert produced + rest == full
    assert reason == "length"  # 14 more tokens, not 24: max_tokens counts the resumed ones
