"""The OpenAI-compatible backend against a real serving engine: llama.cpp's server
(llama-cpp-python) serving the shipped teacher converted to GGUF, next to the transformers
engine on the same weights. Same answers, the budget forced in two calls, a restart's
continuation with no gap and no duplicate, a call the server drops tried again from where it broke,
cancellation, and a server that goes away."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecloud.cloud.config import RemoteEngineConfig
from edgecloud.cloud.engine import EngineConfig, EngineEvent, EngineEventKind, Job, ReasoningEngine, Resume
from edgecloud.cloud.openai_engine import OpenAIEngine
from edgecloud.cloud.transformers_engine import LoadedModel, TransformersEngine
from edgecloud.modelkit.arithmetic.task import Split, generate
from edgecloud.shared.base.errors import ConfigError, ResourceExhaustedError
from edgecloud.shared.reasoner.session import Sampling
from tests.helpers.llama_server import LlamaServer, serve_model
from tests.helpers.sse_proxy import SSECuttingProxy
from tests.helpers.waiting import free_port

K = EngineEventKind


@pytest.fixture(scope="module")
def llama(teacher_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    server = serve_model(teacher_dir, tmp_path_factory.mktemp("llama"))
    yield server
    server.stop()


def remote_engine(teacher_dir: Path, url: str, **config) -> OpenAIEngine:
    return OpenAIEngine.from_dir(
        teacher_dir, RemoteEngineConfig(url=url), EngineConfig(progress_every=8, **config), name="cloud-teacher"
    )


async def collect(engine: ReasoningEngine, job: Job) -> list[EngineEvent]:
    return [event async for event in engine.generate(job)]


def run_both(teacher: LoadedModel, remote: OpenAIEngine, jobs: list[Job]) -> tuple[list, list]:
    """Each job's events from the transformers engine and from the server, one job at a time."""
    local = TransformersEngine(teacher, EngineConfig(max_batch=1, progress_every=8))
    local.start()

    async def main() -> tuple[list, list]:
        here = [await collect(local, job) for job in jobs]
        there = [await collect(remote, job) for job in jobs]
        return here, there

    try:
        return asyncio.run(main())
    finally:
        local.stop()


def reasoning_of(events: list[EngineEvent]) -> str:
    return "".join(e.text for e in events if e.kind in (K.REASONING_DELTA, K.REASONING_PROGRESS))


def answer_of(events: list[EngineEvent]) -> str:
    return "".join(e.text for e in events if e.kind is K.ANSWER_DELTA)


@pytest.mark.parametrize("stream_reasoning", [True, False])
def test_the_server_answers_as_the_transformers_engine_on_the_same_weights(
    llama: LlamaServer, teacher: LoadedModel, teacher_dir: Path, stream_reasoning: bool
) -> None:
    problems = generate(8, seed=5, split=Split.TEST)
    jobs = [Job(f"s{i}", p.query, 256, 32, stream_reasoning) for i, p in enumerate(problems)]
    here, there = run_both(teacher, remote_engine(teacher_dir, llama.url), jobs)
    right = 0
    for problem, mine, theirs in zip(problems, here, there, strict=True):
        assert theirs[0].kind is K.STARTED and theirs[-1].kind is K.FINISHED
        ours, served = mine[-1].result, theirs[-1].result
        assert served is not None and ours is not None
        # Greedy on the same fp32 weights: the same reasoning and answer, token for token.
        assert served.answer == ours.answer
        assert served.reasoning == ours.reasoning == reasoning_of(theirs).strip()
        assert answer_of(theirs).strip() == served.answer
        assert served.usage.reasoning_tokens == ours.usage.reasoning_tokens
        assert served.usage.input_tokens == ours.usage.input_tokens
        assert served.usage.output_tokens == ours.usage.output_tokens
        assert served.finish_reason == ours.finish_reason == "stop"
        right += served.answer == str(problem.answer)
    assert right >= 7, f"{right} of 8 right"


@pytest.mark.parametrize("budget", [0, 1, 5])
def test_the_budget_is_forced_in_two_calls(
    llama: LlamaServer, teacher: LoadedModel, teacher_dir: Path, budget: int
) -> None:
    problem = generate(1, seed=9, split=Split.TEST)[0]
    jobs = [Job("b", problem.query, budget, 32, True)]
    (mine,), (theirs,) = run_both(teacher, remote_engine(teacher_dir, llama.url), jobs)
    ours, served = mine[-1].result, theirs[-1].result
    assert served.usage.reasoning_tokens == ours.usage.reasoning_tokens == budget
    assert served.budget_reached == ours.budget_reached == (budget > 0)
    assert served.reasoning == ours.reasoning
    # An answer comes after the forced </think>. It is a guess with no reasoning behind it, its
    # logits near ties, so llama.cpp's float arithmetic may pick another digit than torch's.
    assert served.answer and ours.answer and served.finish_reason in ("stop", "length")
    assert served.usage.output_tokens <= budget + 2 + 32 + 1


@pytest.mark.parametrize("cut", ["reasoning", "answer"])
def test_a_resumed_job_continues_with_no_gap_and_no_duplicate(llama: LlamaServer, teacher_dir: Path, cut: str) -> None:
    engine = remote_engine(teacher_dir, llama.url)
    problem = generate(1, seed=13, split=Split.TEST)[0]

    async def main() -> None:
        whole = await collect(engine, Job("w", problem.query, 256, 32, True))
        reasoning = [e for e in whole if e.kind is K.REASONING_DELTA]
        answer = [e for e in whole if e.kind is K.ANSWER_DELTA]
        if cut == "reasoning":
            before = reasoning[: len(reasoning) // 2]
            resume = Resume(reasoning="".join(e.text for e in before), reasoning_tokens=before[-1].reasoning_tokens)
        else:
            before = reasoning + answer[:1]
            resume = Resume(
                reasoning="".join(e.text for e in reasoning),
                reasoning_tokens=reasoning[-1].reasoning_tokens,
                answer=answer[0].text,
                answer_tokens=answer[0].answer_tokens,
            )
        rest = await collect(engine, Job("r", problem.query, 256, 32, True, resume=resume))
        streamed = [e.text for e in before] + [e.text for e in rest if e.kind in (K.REASONING_DELTA, K.ANSWER_DELTA)]
        assert "".join(streamed) == "".join(e.text for e in reasoning + answer)
        assert rest[-1].result.answer == whole[-1].result.answer == str(problem.answer)
        assert rest[-1].result.usage.reasoning_tokens == whole[-1].result.usage.reasoning_tokens
        assert rest[-1].result.usage.output_tokens == whole[-1].result.usage.output_tokens

    asyncio.run(main())


def test_a_seeded_sampled_job_repeats_and_a_closed_stream_frees_its_slot(llama: LlamaServer, teacher_dir: Path) -> None:
    engine = remote_engine(teacher_dir, llama.url, max_batch=1, max_queue=1)
    problem = generate(1, seed=17, split=Split.TEST)[0]
    sampled = Sampling(temperature=1.0, top_p=0.95, seed=1234)

    async def main() -> None:
        one = await collect(engine, Job("x", problem.query, 64, 16, True, sampling=sampled))
        two = await collect(engine, Job("y", problem.query, 64, 16, True, sampling=sampled))
        assert reasoning_of(one) == reasoning_of(two) and one[-1].result.answer == two[-1].result.answer

        stream = engine.generate(Job("c", problem.query, 256, 32, True))
        assert (await anext(stream)).kind is K.STARTED and engine.active == 1
        waiting = engine.generate(Job("d", problem.query, 0, 4, True))  # the one waiting place
        with pytest.raises(ResourceExhaustedError):
            engine.generate(Job("e", problem.query, 0, 4, True))
        assert (await anext(stream)).kind is K.REASONING_DELTA
        await stream.aclose()  # what the runner does when the session is cancelled
        assert engine.active == 0
        rest = [e async for e in waiting]  # its turn comes at once: the cancelled call let go of the server
        assert rest[-1].kind is K.FINISHED and engine.queue_depth == 0

    asyncio.run(main())


@pytest.mark.parametrize(("cut", "cut_at"), [("reasoning", (1, 4)), ("answer", (2, 2))])
def test_a_call_the_server_drops_goes_on_from_what_was_streamed(
    llama: LlamaServer, teacher_dir: Path, cut: str, cut_at: tuple[int, int]
) -> None:
    """The connection breaks before the 4th streamed chunk of the reasoning call, or before the 2nd
    of the answer call: the job tries again from its text so far and streams the same as unbroken."""
    problem = generate(1, seed=13, split=Split.TEST)[0]

    async def main() -> None:
        proxy = SSECuttingProxy(llama.port, cut_at=cut_at)
        await proxy.start()
        try:
            config = RemoteEngineConfig(url=proxy.url, retry_backoff_s=0.01)
            broken = OpenAIEngine.from_dir(teacher_dir, config, EngineConfig(progress_every=8), name="cloud-teacher")
            whole = await collect(remote_engine(teacher_dir, llama.url), Job("w", problem.query, 256, 32, True))
            again = await collect(broken, Job("b", problem.query, 256, 32, True))
        finally:
            await proxy.close()
        assert proxy.cuts == 1 and proxy.posts == 3  # the broken call, its retry and the other call
        assert [e.kind for e in again if e.kind in (K.STARTED, K.FAILED, K.FINISHED)] == [K.STARTED, K.FINISHED]
        streamed = [(e.kind, e.text) for e in again if e.kind in (K.REASONING_DELTA, K.ANSWER_DELTA)]
        assert streamed == [(e.kind, e.text) for e in whole if e.kind in (K.REASONING_DELTA, K.ANSWER_DELTA)]
        assert again[-1].result.answer == whole[-1].result.answer == str(problem.answer)
        assert again[-1].result.usage == whole[-1].result.usage

    asyncio.run(main())


def test_a_server_that_is_gone_fails_the_job_with_a_clear_error(teacher_dir: Path) -> None:
    remote = RemoteEngineConfig(
        url=f"http://127.0.0.1:{free_port()}/v1", served_model="teacher", retries=2, retry_backoff_s=0.01
    )
    engine = OpenAIEngine.from_dir(teacher_dir, remote, name="cloud-teacher")
    events = asyncio.run(collect(engine, Job("g", "1+1", 8, 4, True)))
    assert [e.kind for e in events] == [K.STARTED, K.FAILED]  # after the retries
    assert events[-1].error_code == "ENGINE_ERROR" and "serving engine failed" in events[-1].error


def test_the_remote_config_refuses_what_it_cannot_do_safely(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not loopback"):
        RemoteEngineConfig(url="http://10.1.2.3:8000/v1")
    with pytest.raises(ConfigError, match="retries"):
        RemoteEngineConfig(url="http://127.0.0.1:8000/v1", retries=-1)
    assert RemoteEngineConfig(url="http://vllm:8000/v1", allow_plaintext=True).allow_plaintext
    assert RemoteEngineConfig(url="https://vllm.example:8000/v1").url
    with pytest.raises(ConfigError, match="http"):
        RemoteEngineConfig(url="ftp://127.0.0.1/v1")
    with pytest.raises(ConfigError, match="readable"):
        RemoteEngineConfig(url="http://127.0.0.1:1/v1", api_key_file=tmp_path / "missing")
