"""The engine against the model kit's plain batched decoding: continuous
batching (rows joining and leaving mid-flight) must not change any output."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from edgecloud.cloud.engine import EngineConfig, EngineEvent, EngineEventKind, Job, ReasoningEngine
from edgecloud.cloud.transformers_engine import LoadedModel, TransformersEngine
from edgecloud.modelkit.arithmetic.task import Split, generate
from edgecloud.modelkit.arithmetic.teacher import chat_prompt
from edgecloud.modelkit.decoding import generate_batch
from edgecloud.shared.base.errors import ConfigError, ResourceExhaustedError
from edgecloud.shared.reasoner.session import Message, Sampling


def run_jobs(engine: TransformersEngine, specs: list[tuple[str, int, bool]]) -> dict[str, list[EngineEvent]]:
    events: dict[str, list[EngineEvent]] = {str(i): [] for i in range(len(specs))}
    done = threading.Semaphore(0)

    def listener(session_id: str):
        def on_event(event: EngineEvent) -> None:
            events[session_id].append(event)
            if event.kind in (EngineEventKind.FINISHED, EngineEventKind.FAILED):
                done.release()

        return on_event

    for i, (query, budget, stream) in enumerate(specs):
        engine.submit(Job(str(i), query, budget, 32, stream, listener(str(i))))
    for _ in specs:
        assert done.acquire(timeout=120)
    return events


@pytest.fixture(scope="module")
def engine(teacher: LoadedModel):
    running = TransformersEngine(teacher, EngineConfig(max_batch=4, progress_every=8))
    running.start()
    yield running
    running.stop()


@pytest.mark.parametrize("budget", [256, 12, 0])
def test_continuous_batching_matches_plain_batched_decoding(
    engine: TransformersEngine, teacher: LoadedModel, budget: int
) -> None:
    problems = generate(12, seed=11, split=Split.TEST)
    events = run_jobs(engine, [(p.query, budget, False) for p in problems])
    prompts = [chat_prompt(teacher.tokenizer, p.query, enable_thinking=budget > 0) for p in problems]
    reference = generate_batch(
        teacher.model, teacher.tokenizer, prompts, max_new_tokens=300, reasoning_budget=budget or None
    )
    for i, ref in enumerate(reference):
        result = events[str(i)][-1].result
        assert result is not None
        assert result.answer == ref.answer_text, problems[i].query
        assert result.usage.reasoning_tokens == ref.reasoning_tokens
        assert result.budget_reached == ref.forced


def test_events_add_up_to_the_result(engine: TransformersEngine) -> None:
    events = run_jobs(engine, [("calculate 17*3+4-9", 256, True), ("calculate 17*3+4-9", 256, False)])
    streamed, hidden = events["0"], events["1"]
    for log in (streamed, hidden):
        assert log[0].kind is EngineEventKind.STARTED and log[-1].kind is EngineEventKind.FINISHED
        answer = "".join(e.text for e in log if e.kind is EngineEventKind.ANSWER_DELTA)
        assert answer.strip() == log[-1].result.answer
    assert any(e.kind is EngineEventKind.REASONING_DELTA for e in streamed)
    assert not any(e.kind is EngineEventKind.REASONING_DELTA for e in hidden)
    progress = [e.reasoning_tokens for e in hidden if e.kind is EngineEventKind.REASONING_PROGRESS]
    assert progress[-1] == hidden[-1].result.usage.reasoning_tokens
    assert all(b - a <= 8 for a, b in zip([0, *progress], progress))


def test_a_seeded_sampled_job_repeats_and_another_seed_differs(random_qwen3_dir) -> None:  # type: ignore[no-untyped-def]
    # An untrained model's logits are near flat: sampling shows in the text at once.
    loaded = LoadedModel.from_dir(random_qwen3_dir, device="cpu")
    assert loaded.default_sampling == Sampling(temperature=0.0, top_p=1.0)  # its generation config is greedy
    engine = TransformersEngine(loaded, EngineConfig(max_batch=4))
    engine.start()
    try:
        texts = {}
        for name, sampling in {
            "a": Sampling(temperature=1.0, top_p=0.95, seed=7),
            "again": Sampling(temperature=1.0, top_p=0.95, seed=7),
            "other": Sampling(temperature=1.0, top_p=0.95, seed=8),
            "greedy": Sampling(temperature=0.0),
            "greedy-again": Sampling(),
        }.items():
            done, result = threading.Event(), []

            def on_event(event: EngineEvent, result=result, done=done) -> None:  # type: ignore[no-untyped-def]
                if event.kind in (EngineEventKind.FINISHED, EngineEventKind.FAILED):
                    result.append(event)
                    done.set()

            engine.submit(Job(name, "1+1", 24, 8, False, on_event, sampling=sampling))
            assert done.wait(60)
            texts[name] = (result[0].result.reasoning, result[0].result.answer)
        assert texts["a"] == texts["again"] and texts["a"] != texts["other"]
        assert texts["greedy"] == texts["greedy-again"] != texts["a"]
    finally:
        engine.stop()


def test_a_conversation_is_rendered_whole_with_old_think_blocks_stripped(teacher: LoadedModel) -> None:
    from edgecloud.cloud.engine import chat_messages

    turns = (
        Message("system", "be brief"),
        Message("user", "2+2"),
        Message("assistant", "<think>\n2+2=4\n</think>\n\n4"),
        Message("user", "3+3"),
    )
    assert chat_messages(turns)[2] == {"role": "assistant", "content": "4"}
    engine = TransformersEngine(teacher, EngineConfig())
    alone = engine.count_prompt_tokens((Message("user", "3+3"),), 64)
    whole = engine.count_prompt_tokens(turns, 64)
    prompt = teacher.tokenizer.apply_chat_template(chat_messages(turns), tokenize=False, add_generation_prompt=True)
    assert "be brief" in prompt and "2+2=4" not in prompt and whole > alone + 6


def test_queue_bound_and_config_validation(teacher: LoadedModel) -> None:
    idle = TransformersEngine(teacher, EngineConfig(max_batch=1, max_queue=2))  # not started: nothing leaves the queue
    job = Job("a", "1+1", 0, 4, False, lambda e: None)
    idle.submit(job)
    idle.submit(job)
    with pytest.raises(ResourceExhaustedError):
        idle.submit(job)
    with pytest.raises(ConfigError):
        EngineConfig(max_batch=0)
    with pytest.raises(ConfigError):
        EngineConfig(default_max_output_tokens=10, max_output_tokens=5)


def test_waiting_interactive_jobs_start_before_waiting_verification_jobs(teacher: LoadedModel) -> None:
    one = TransformersEngine(teacher, EngineConfig(max_batch=1, progress_every=8))
    started: list[str] = []
    running, done = threading.Event(), threading.Semaphore(0)

    def on_event(event: EngineEvent) -> None:
        if event.kind is EngineEventKind.STARTED:
            started.append(event.session_id)
            running.set()
        elif event.kind in (EngineEventKind.FINISHED, EngineEventKind.FAILED):
            done.release()

    one.start()
    try:
        one.submit(Job("first", "calculate 17*3+4-9", 256, 16, False, on_event))
        assert running.wait(60)  # the one slot is taken: what follows waits
        one.submit(Job("check-1", "2+2", 0, 4, False, on_event, verification=True))
        one.submit(Job("check-2", "3+3", 0, 4, False, on_event, verification=True))
        one.submit(Job("user-1", "4+4", 0, 4, False, on_event))
        one.submit(Job("user-2", "5+5", 0, 4, False, on_event))
        for _ in range(5):
            assert done.acquire(timeout=120)
    finally:
        one.stop()
    assert started == ["first", "user-1", "user-2", "check-1", "check-2"]


def test_the_transformers_backend_is_a_reasoning_engine(engine: TransformersEngine) -> None:
    assert isinstance(engine, ReasoningEngine)
    assert engine.name and engine.queue_depth == 0 and engine.active == 0


def test_sessions_the_server_and_the_edge_import_no_torch() -> None:
    # The engine seam keeps torch and transformers in the backend: everything that drives an
    # engine, and all of the edge, loads without them (an edge device does not install them).
    modules = [
        "edgecloud.cloud.engine",
        "edgecloud.cloud.sessions",
        "edgecloud.cloud.server",
        "edgecloud.cloud.stores",
        "edgecloud.cloud.config",
    ]
    modules += [
        f"edgecloud.edge.{name}" for name in ("agent", "api", "daemon", "escalation", "outbox", "runtime", "service")
    ]
    code = (
        "import sys\n"
        f"for name in {modules!r}: __import__(name)\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
