"""Grammar-constrained decoding in the engine (demo model: random weights, DeepSeek's tokenizer):
the bitmask fast path against its reference, constrained output validating against its schema,
and constrained requests sharing batches, preemption, chunked prefill, restarts and aborts."""

from __future__ import annotations

import json

import jsonschema
import msgspec
import pytest
import torch

from seekd import LLM, SamplingParams
from seekd.engine.request import EngineCoreRequest
from seekd.engine.structured.bitmask import (
    apply_by_bias,
    apply_by_bits,
    apply_token_bitmask,
    apply_token_bitmask_reference,
)
from seekd.engine.structured.grammar import GrammarError
from seekd.sampling_params import StructuredOutputParams

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "color": {"enum": ["red", "green", "blue"]},
    },
    "required": ["name", "age", "color"],
    "additionalProperties": False,
}
FLAGS = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
    },
    "required": ["ok", "tags"],
    "additionalProperties": False,
}
PROMPTS = ["Describe a person as JSON", "flags please", "你好，世界", "Tell me a story", "JSON object:"]


def make_llm(data_dir, **overrides) -> LLM:
    options = dict(data_dir=str(data_dir), num_kv_blocks=256, show_progress=False) | overrides
    return LLM(**options)


@pytest.fixture(scope="module")
def demo(data_dir) -> LLM:
    return make_llm(data_dir)


def constrained(schema: dict | None, **kw) -> SamplingParams:
    structured = StructuredOutputParams.from_schema(schema) if schema else StructuredOutputParams(json_object=True)
    return SamplingParams(max_tokens=80, structured=structured, **kw)


def mixed_params() -> list[SamplingParams]:
    return [
        constrained(PERSON, temperature=0.0),
        constrained(FLAGS, temperature=0.9, seed=5),
        SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True),
        constrained(None, temperature=0.8, seed=2),  # a seed whose draw closes the object within max_tokens
        SamplingParams(temperature=1.0, seed=9, max_tokens=12, ignore_eos=True),
    ]


def check_valid(text: str, params: SamplingParams) -> None:
    value = json.loads(text)
    schema = params.structured.json_schema
    jsonschema.validate(value, json.loads(schema) if schema else {"type": "object"})


def texts(outs) -> list[str]:
    return [c.text for o in outs for c in o.outputs]


def test_structured_params_cross_msgpack_and_survive_for_choice():
    params = constrained(PERSON, n=3, seed=2)
    request = EngineCoreRequest(request_id="r", prompt_token_ids=[1, 2], sampling_params=params.for_choice(2))
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(request), type=EngineCoreRequest)
    assert decoded.sampling_params.structured == params.structured
    assert json.loads(decoded.sampling_params.structured.json_schema) == PERSON
    assert decoded.sampling_params.seed == 4 and decoded.sampling_params.n == 1
    with pytest.raises(msgspec.ValidationError, match="exactly one"):
        msgspec.msgpack.decode(msgspec.msgpack.encode({"structured": {}}), type=SamplingParams)


@pytest.mark.parametrize("apply", [apply_token_bitmask, apply_by_bias, apply_by_bits])
def test_masked_logits_equal_unmasked_on_allowed_tokens_and_neg_inf_elsewhere(apply):
    gen = torch.Generator().manual_seed(0)
    vocab = 1000  # not a multiple of 32: the last word is partly padding
    logits = torch.randn(4, vocab, generator=gen)
    bitmask = torch.randint(-(2**31), 2**31 - 1, (4, (vocab + 31) // 32), dtype=torch.int32, generator=gen)
    bitmask[2] = -1  # an unconstrained row
    bitmask[3, 5] = 0
    fast = apply(logits.clone(), bitmask)
    reference = apply_token_bitmask_reference(logits, bitmask)
    assert torch.equal(fast, reference)
    allowed = reference != float("-inf")
    assert torch.equal(fast[allowed], logits[allowed])
    assert torch.equal(fast[2], logits[2])
    assert (fast[3, 160:192] == float("-inf")).all()
    assert 0 < allowed[:2].sum() < 2 * vocab
    only_rows = apply_token_bitmask(logits.clone(), bitmask, rows=[0, 3])
    assert torch.equal(only_rows[[0, 3]], reference[[0, 3]]) and torch.equal(only_rows[[1, 2]], logits[[1, 2]])


@pytest.mark.gpu
def test_cuda_mask_equals_the_reference():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 1000, generator=gen)
    bitmask = torch.randint(-(2**31), 2**31 - 1, (3, 32), dtype=torch.int32, generator=gen)
    fast = apply_token_bitmask(logits.cuda(), bitmask.cuda()).cpu()
    assert torch.equal(fast, apply_token_bitmask_reference(logits, bitmask))


def test_constrained_output_validates_and_stops_when_the_grammar_completes(demo):
    params = mixed_params()
    outs = demo.generate(PROMPTS, params)
    for out, p in zip(outs, params):
        o = out.outputs[0]
        if p.structured is None:
            assert o.finish_reason == "length"
            continue
        assert o.finish_reason == "stop", o.text
        check_valid(o.text, p)
    assert not demo.engine.has_unfinished_requests()


def test_same_text_alone_and_in_a_mixed_batch(demo):
    params = mixed_params()
    batched = texts(demo.generate(PROMPTS, params))
    alone = [texts(demo.generate(prompt, p))[0] for prompt, p in zip(PROMPTS, params)]
    assert batched == alone


def test_n_choices_each_get_their_own_matcher(demo):
    params = constrained(PERSON, temperature=1.0, seed=21, n=3)
    (out,) = demo.generate("people", params)
    assert len(out.outputs) == 3
    for o in out.outputs:
        check_valid(o.text, params)
    assert len({o.text for o in out.outputs}) > 1
    (again,) = demo.generate("people", params)
    assert [o.text for o in again.outputs] == [o.text for o in out.outputs]


def test_preemption_and_chunked_prefill_keep_constrained_output(demo, data_dir):
    params = [constrained(PERSON, temperature=0.0), constrained(FLAGS, temperature=0.7, seed=3)] * 3
    prompts = [f"{p} {i}" * 6 for i, p in enumerate(PROMPTS[:3] * 2)]
    expected = texts(demo.generate(prompts, params))
    tight = make_llm(data_dir, num_kv_blocks=14, enable_prefix_caching=False)
    assert texts(tight.generate(prompts, params)) == expected
    assert tight.engine.scheduler.num_preemptions > 0
    chunked = make_llm(data_dir, max_num_batched_tokens=9, enable_prefix_caching=False)
    assert texts(chunked.generate(prompts, params)) == expected


def test_resumed_request_replays_its_tokens_into_the_matcher(demo):
    params = constrained(PERSON, temperature=0.6, seed=17)
    (full,) = demo.generate("resume me", params)
    tokens = full.outputs[0].token_ids
    assert len(tokens) > 6
    engine = demo.engine
    prompt = demo.tokenizer.encode("resume me")
    engine.add_request(
        EngineCoreRequest(
            request_id="resumed",
            prompt_token_ids=prompt,
            sampling_params=params,
            resume_output_token_ids=tokens[:5],
        )
    )
    produced, finish = [], None
    while engine.has_unfinished_requests():
        for out in engine.step():
            produced += out.new_token_ids
            finish = out.finish_reason or finish
    assert tokens[:5] + produced == tokens
    assert finish == "stop"


def test_abort_frees_the_request_and_a_bad_grammar_fails_only_its_request(demo):
    engine = demo.engine
    prompt = demo.tokenizer.encode("abort")
    engine.add_request(EngineCoreRequest(request_id="a", prompt_token_ids=prompt, sampling_params=constrained(PERSON)))
    engine.step()
    request = engine.scheduler.requests["a"]
    assert request.grammar is not None and request.grammar.num_consumed == 1
    (out,) = engine.abort_requests(["a"])
    assert out.finish_reason == "abort" and not engine.has_unfinished_requests()
    bad = SamplingParams(structured=StructuredOutputParams(json_schema='{"type": "nonsense"}'))
    with pytest.raises(GrammarError, match="nonsense"):
        engine.add_request(EngineCoreRequest(request_id="bad", prompt_token_ids=prompt, sampling_params=bad))
    assert not engine.has_unfinished_requests()
    (ok,) = demo.generate("after", constrained(FLAGS, temperature=0.0))
    check_valid(ok.outputs[0].text, constrained(FLAGS))


def test_lark_grammar_with_special_tokens_and_an_embedded_schema(demo):
    """The shape a forced tool call takes: DeepSeek's markup tokens around JSON arguments."""
    compact = {**PERSON, "x-guidance": {"whitespace_pattern": " ?"}}  # %json reads its options here
    grammar = f"start: <｜tool▁calls▁begin｜> args <｜tool▁calls▁end｜>\nargs: %json {json.dumps(compact)}\n"
    params = SamplingParams(
        temperature=0.0,
        max_tokens=80,
        skip_special_tokens=False,
        structured=StructuredOutputParams(grammar=grammar),
    )
    (out,) = demo.generate("call a tool", params)
    o = out.outputs[0]
    begin, end = (
        demo.tokenizer.encode(t, add_special_tokens=False) for t in ("<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>")
    )
    assert o.finish_reason == "stop"
    assert o.token_ids[:1] == begin and o.token_ids[-1:] == end
    args = o.text.removeprefix("<｜tool▁calls▁begin｜>").removesuffix("<｜tool▁calls▁end｜>")
    jsonschema.validate(json.loads(args), PERSON)


def test_grammar_starting_after_a_token_leaves_the_reasoning_free(demo):
    """`start_after_token` (the server's `</think>`): the output is the unconstrained one up to and
    including that token, and the schema binds everything after it."""
    free = demo.generate(
        ["Describe a person as JSON"], SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    )[0].outputs[0]
    end = free.token_ids[5]
    first = free.token_ids.index(end)  # where it first appears
    structured = msgspec.structs.replace(StructuredOutputParams.from_schema(PERSON), start_after_token=end)
    out = demo.generate(
        ["Describe a person as JSON"], SamplingParams(temperature=0.0, max_tokens=80, structured=structured)
    )[0].outputs[0]
    assert out.token_ids[: first + 1] == free.token_ids[: first + 1]
    answer = demo.tokenizer.decode(out.token_ids[first + 1 :])
    jsonschema.validate(json.loads(answer), PERSON)
    assert out.finish_reason == "stop"
    never = msgspec.structs.replace(structured, start_after_token=demo.engine.hf_config.vocab_size - 1)
    unbound = demo.generate(
        ["Describe a person as JSON"], SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, structured=never)
    )
    assert unbound[0].outputs[0].token_ids == free.token_ids  # the token never came: nothing was constrained
