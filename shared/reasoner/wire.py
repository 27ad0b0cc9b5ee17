"""The one place where ``edgecloud.v1`` protobuf messages and domain objects meet.

Both the cloud servicer and the edge client convert here and nowhere else.
``*_from_pb`` functions validate: malformed input raises
:class:`~edgecloud.shared.base.errors.InvalidInputError`.
"""

from __future__ import annotations

from edgecloud.proto.edgecloud.v1 import reasoner_pb2 as pb
from edgecloud.shared.base.errors import InvalidInputError
from edgecloud.shared.reasoner.features import EncodedFeatures
from edgecloud.shared.reasoner.session import (
    MAX_MESSAGES,
    EdgeHint,
    Event,
    EventKind,
    Failure,
    Message,
    Sampling,
    SessionInfo,
    SessionStatus,
    ThinkParams,
    Timings,
    Usage,
)

__all__ = [
    "event_from_pb",
    "event_to_pb",
    "features_from_pb",
    "features_to_pb",
    "session_info_from_pb",
    "session_info_to_pb",
    "think_request_from_pb",
    "think_request_to_pb",
]

MAX_FEATURE_DIMS = 8


def features_to_pb(features: EncodedFeatures) -> pb.CompressedFeatures:
    return pb.CompressedFeatures(
        codec=features.codec,
        dtype=features.dtype,
        dims=list(features.dims),
        scale=features.scale,
        payload=features.payload,
        schema_version=features.schema_version,
        model_name=features.model_name,
        model_version=features.model_version,
        model_sha256=features.model_sha256,
    )


def features_from_pb(message: pb.CompressedFeatures) -> EncodedFeatures:
    """Structure only; :func:`edgecloud.shared.reasoner.features.decode_features` checks the content."""
    if len(message.dims) > MAX_FEATURE_DIMS:
        raise InvalidInputError(f"features.dims has {len(message.dims)} entries; at most {MAX_FEATURE_DIMS}")
    return EncodedFeatures(
        codec=message.codec,
        dtype=message.dtype,
        dims=tuple(int(d) for d in message.dims),
        scale=float(message.scale),
        payload=bytes(message.payload),
        schema_version=int(message.schema_version),
        model_name=message.model_name,
        model_version=int(message.model_version),
        model_sha256=message.model_sha256,
    )


def think_request_to_pb(params: ThinkParams) -> pb.ThinkRequest:
    message = pb.ThinkRequest(
        request_id=params.request_id,
        device_id=params.device_id,
        query=params.query,
        max_output_tokens=params.max_output_tokens,
        stream_reasoning=params.stream_reasoning,
        messages=[pb.ChatMessage(role=m.role, content=m.content) for m in params.messages],
        requested_route="" if params.requested_route == "auto" else params.requested_route,
        priority=pb.PRIORITY_VERIFICATION if params.priority == "verification" else pb.PRIORITY_INTERACTIVE,
    )
    sampling = params.sampling
    if not sampling.unset:
        message.sampling.SetInParent()
        if sampling.temperature is not None:
            message.sampling.temperature = sampling.temperature
        if sampling.top_p is not None:
            message.sampling.top_p = sampling.top_p
        if sampling.seed is not None:
            message.sampling.seed = sampling.seed
    if params.features is not None:
        message.features.CopyFrom(features_to_pb(params.features))
    if params.hint is not None:
        message.hint.CopyFrom(
            pb.EdgeHint(
                confidence=params.hint.confidence,
                estimated_difficulty=params.hint.estimated_difficulty,
                answer=params.hint.answer,
            )
        )
    if params.max_reasoning_tokens is not None:
        message.max_reasoning_tokens = params.max_reasoning_tokens
    return message


def think_request_from_pb(message: pb.ThinkRequest) -> ThinkParams:
    if len(message.messages) > MAX_MESSAGES:
        raise InvalidInputError(f"the conversation has {len(message.messages)} messages; the limit is {MAX_MESSAGES}")
    hint = None
    if message.HasField("hint"):
        hint = EdgeHint(
            confidence=float(message.hint.confidence),
            estimated_difficulty=float(message.hint.estimated_difficulty),
            answer=message.hint.answer,
        )
    return ThinkParams(
        request_id=message.request_id,
        device_id=message.device_id,
        query=message.query,
        features=features_from_pb(message.features) if message.HasField("features") else None,
        hint=hint,
        max_reasoning_tokens=message.max_reasoning_tokens if message.HasField("max_reasoning_tokens") else None,
        max_output_tokens=message.max_output_tokens,
        stream_reasoning=message.stream_reasoning,
        messages=tuple(Message(m.role, m.content) for m in message.messages),
        sampling=_sampling_from_pb(message.sampling) if message.HasField("sampling") else Sampling(),
        requested_route=message.requested_route or "auto",
        priority=_priority_from_pb(message.priority),
    )


def _priority_from_pb(value: int) -> str:
    if value == pb.PRIORITY_INTERACTIVE:
        return "interactive"
    if value == pb.PRIORITY_VERIFICATION:
        return "verification"
    raise InvalidInputError(f"priority {value} is not one this server knows (INTERACTIVE, VERIFICATION)")


def _sampling_from_pb(message: pb.Sampling) -> Sampling:
    return Sampling(
        temperature=message.temperature if message.HasField("temperature") else None,
        top_p=message.top_p if message.HasField("top_p") else None,
        seed=message.seed if message.HasField("seed") else None,
    )


def _usage_to_pb(usage: Usage) -> pb.Usage:
    return pb.Usage(
        input_tokens=usage.input_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        output_tokens=usage.output_tokens,
        cached_tokens=usage.cached_tokens,
    )


def _usage_from_pb(message: pb.Usage) -> Usage:
    return Usage(
        input_tokens=message.input_tokens,
        reasoning_tokens=message.reasoning_tokens,
        output_tokens=message.output_tokens,
        cached_tokens=message.cached_tokens,
    )


def _failure_to_pb(failure: Failure) -> pb.Failure:
    return pb.Failure(code=failure.code, message=failure.message)


def event_to_pb(event: Event) -> pb.ThinkEvent:
    message = pb.ThinkEvent(seq=event.seq, session_id=event.session_id)
    match event.kind:
        case EventKind.ACCEPTED:
            message.accepted.CopyFrom(
                pb.Accepted(
                    reasoning_budget=event.reasoning_budget,
                    model_name=event.model_name,
                    model_version=event.model_version,
                    queue_position=event.queue_position,
                )
            )
        case EventKind.REASONING_PROGRESS:
            message.reasoning_progress.CopyFrom(pb.ReasoningProgress(reasoning_tokens=event.reasoning_tokens))
        case EventKind.REASONING_DELTA:
            message.reasoning_delta.CopyFrom(pb.TextDelta(text=event.text))
        case EventKind.ANSWER_DELTA:
            message.answer_delta.CopyFrom(pb.TextDelta(text=event.text))
        case EventKind.COMPLETED:
            t = event.timings
            message.completed.CopyFrom(
                pb.Completed(
                    answer=event.text,
                    usage=_usage_to_pb(event.usage),
                    timings=pb.Timings(
                        queue_ms=t.queue_ms,
                        reasoning_ms=t.reasoning_ms,
                        answer_ms=t.answer_ms,
                        total_ms=t.total_ms,
                        first_answer_token_ms=t.first_answer_token_ms,
                        prefill_ms=t.prefill_ms,
                    ),
                    cached=event.cached,
                    budget_reached=event.budget_reached,
                    finish_reason=event.finish_reason,
                )
            )
        case EventKind.FAILED:
            failure = event.failure or Failure("UNKNOWN", "")
            message.failed.CopyFrom(_failure_to_pb(failure))
    return message


def event_from_pb(message: pb.ThinkEvent) -> Event:
    which = message.WhichOneof("event")
    if which is None:
        raise InvalidInputError(f"event {message.seq} of session {message.session_id!r} carries nothing")
    kind = EventKind(which)
    base = {"seq": int(message.seq), "session_id": message.session_id, "kind": kind}
    match kind:
        case EventKind.ACCEPTED:
            a = message.accepted
            return Event(
                **base,
                reasoning_budget=a.reasoning_budget,
                model_name=a.model_name,
                model_version=a.model_version,
                queue_position=a.queue_position,
            )
        case EventKind.REASONING_PROGRESS:
            return Event(**base, reasoning_tokens=message.reasoning_progress.reasoning_tokens)
        case EventKind.REASONING_DELTA:
            return Event(**base, text=message.reasoning_delta.text)
        case EventKind.ANSWER_DELTA:
            return Event(**base, text=message.answer_delta.text)
        case EventKind.COMPLETED:
            c = message.completed
            t = c.timings
            return Event(
                **base,
                text=c.answer,
                usage=_usage_from_pb(c.usage),
                timings=Timings(
                    t.queue_ms, t.reasoning_ms, t.answer_ms, t.total_ms, t.first_answer_token_ms, t.prefill_ms
                ),
                cached=c.cached,
                budget_reached=c.budget_reached,
                finish_reason=c.finish_reason,
            )
        case _:
            return Event(**base, failure=Failure(message.failed.code, message.failed.message))


def session_info_to_pb(info: SessionInfo) -> pb.SessionInfo:
    message = pb.SessionInfo(
        session_id=info.session_id,
        request_id=info.request_id,
        status=int(info.status),
        answer=info.answer,
        usage=_usage_to_pb(info.usage),
        last_seq=info.last_seq,
        model_name=info.model_name,
        model_version=info.model_version,
        cached=info.cached,
        reasoning_budget=info.reasoning_budget,
        device_id=info.device_id,
    )
    if info.failure is not None:
        message.failure.CopyFrom(_failure_to_pb(info.failure))
    return message


def session_info_from_pb(message: pb.SessionInfo) -> SessionInfo:
    try:
        status = SessionStatus(message.status)
    except ValueError:
        raise InvalidInputError(f"unknown session status {message.status}") from None
    return SessionInfo(
        session_id=message.session_id,
        request_id=message.request_id,
        status=status,
        last_seq=int(message.last_seq),
        answer=message.answer,
        usage=_usage_from_pb(message.usage),
        model_name=message.model_name,
        model_version=message.model_version,
        cached=message.cached,
        failure=Failure(message.failure.code, message.failure.message) if message.HasField("failure") else None,
        reasoning_budget=message.reasoning_budget,
        device_id=message.device_id,
    )
