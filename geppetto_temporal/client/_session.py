"""`Session`: a conversation (a `SessionWorkflow`): create, attach, prompt, status,
transcript, close."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import GetWorkflowExecutionHistoryReverseRequest
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.client import (
    WorkflowExecutionStatus as ExecutionStatus,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from geppetto_temporal import search
from geppetto_temporal._inputs import (
    SESSION_CARRY_LIMIT,
    SESSION_ID_PATTERN,
    check_existing_id,
    check_new_session_id,
    check_prompt,
)
from geppetto_temporal._known_blocks import KnownBlocks
from geppetto_temporal.client._common import (
    EngineLike,
    _has_external_storage,
    _inference_number,
    _keyed_update_id,
    _output_model,
    _to_spec,
    _update_id,
    new_session_id,
)
from geppetto_temporal.client._handle import ExecutionHandle
from geppetto_temporal.contract import (
    DEFAULT_TASK_QUEUE,
    SESSION_FEATURES,
    SESSION_WORKFLOW,
    WAITING_ATTRIBUTE,
    Budget,
    CancelInferenceRequest,
    CloseRequest,
    PromptLookup,
    SessionInput,
    SessionQuery,
    SessionSignal,
    SessionState,
    SessionStatus,
    SessionSummary,
    SessionTranscript,
    SessionUpdate,
    StartInferenceRequest,
    StartInferenceResponse,
    StepModeRequest,
    StepModeResponse,
    SubmitPromptRequest,
    inference_workflow_id,
)
from geppetto_temporal.engines._builder import build_output_spec
from geppetto_temporal.engines._spec import EngineSpec
from geppetto_temporal.errors import (
    ErrorType,
    GeppettoError,
    InvalidPromptError,
    NotPausedError,
    PromptTooLargeError,
    SessionBusyError,
    SessionClosedError,
    SessionError,
    SessionNotFoundError,
)
from geppetto_temporal.events import Event
from geppetto_temporal.offline import no_poller
from geppetto_temporal.turns import Turn


@dataclass(frozen=True)
class _SessionStart:
    """How to start a session workflow: its input and `start_workflow` options."""

    input: SessionInput
    options: dict[str, Any]

    def with_update(self) -> WithStartWorkflowOperation[Any, SessionSummary]:
        """The same start, to go with a `start_inference` update (update-with-start).

        Without the initial search attributes: the update runs in the first workflow
        task, which sets them all anyway, and the started event stays small.
        """
        options = {**self.options, "search_attributes": None}
        return WithStartWorkflowOperation(
            SESSION_WORKFLOW, self.input, result_type=SessionSummary, **options
        )

    @property
    def takes_first_prompt(self) -> bool:
        """Whether the first prompt can travel in the start input (a new session, never an existing one)."""
        policy: WorkflowIDConflictPolicy = self.options["id_conflict_policy"]
        return policy == WorkflowIDConflictPolicy.FAIL

    def with_first_prompt(
        self, prompt: str, engine: EngineSpec | None
    ) -> tuple[SessionInput, dict[str, Any]]:
        """The same start carrying the first prompt (`SessionInput.first_prompt`).

        No update: the session runs the prompt in its first workflow task, which
        also sets the search attributes. Eager start: when this client's process
        runs a worker on the task queue, the server hands it that first task in
        the start call's reply instead of through the task queue.
        """
        update: dict[str, Any] = {"first_prompt": prompt}
        if engine is not None:
            update["engine"] = engine
        options = {**self.options, "search_attributes": None, "request_eager_start": True}
        return self.input.model_copy(update=update), options


class Session:
    """A durable conversation: its id is the Temporal workflow id of its SessionWorkflow."""

    def __init__(self, client: Client, session_id: str) -> None:
        check_existing_id(session_id)
        self.client = client
        self.session_id = session_id
        self._handle: WorkflowHandle[object, SessionSummary] = client.get_workflow_handle(
            session_id, result_type=SessionSummary
        )
        self._last_finished: str | None = None
        # The session's first blocks as far as this client has read them.
        self._conversation = KnownBlocks()
        # Set by `create(lazy=True)` until the workflow has been started.
        self._pending_start: _SessionStart | None = None
        # Typed output of the engine this client gave the session (only a builder has one).
        self._output_type: type[BaseModel] | None = None

    def __repr__(self) -> str:
        return f"Session({self.session_id!r})"

    @property
    def workflow_handle(self) -> WorkflowHandle[object, SessionSummary]:
        """The underlying Temporal workflow handle."""
        return self._handle

    @classmethod
    async def create(
        cls,
        client: Client,
        engine: EngineLike = "openai:gpt-4o-mini",
        *,
        session_id: str | None = None,
        task_queue: str = DEFAULT_TASK_QUEUE,
        reuse_existing: bool = False,
        search_attributes: bool | None = None,
        lazy: bool = False,
        memo: Mapping[str, Any] | None = None,
        budget: Budget | None = None,
    ) -> Session:
        """Start a new session (a SessionWorkflow) with this engine.

        With `reuse_existing`, an open session of that id is attached to instead
        (its engine is kept); a closed one raises `SessionClosedError`.
        `search_attributes` keeps geppetto's search attributes current
        (`geppetto_temporal.search`); by default when the cluster has them registered.

        With `lazy=True` nothing is started yet: the first `start_inference` starts
        the workflow and the inference in one call (update-with-start), which saves
        a round trip and a workflow task; any other call starts it first. A taken
        session id is then reported by that first call.

        `memo` is stored with the session's workflow when this call starts it (kept
        across continue-as-new, shown in the Temporal UI; never put secrets in it).

        `budget` limits the tokens, cost and tool calls of all the session's inferences
        together (docs/approvals.md); `status()` shows it and what is used.
        """
        if session_id is None:
            session_id = new_session_id()
        elif not SESSION_ID_PATTERN.fullmatch(session_id):
            return await cls._create_with_legacy_id(client, session_id, reuse_existing)
        spec = _to_spec(engine)
        search_attributes = await search.use_search_attributes(client, search_attributes)
        start = _SessionStart(
            SessionInput(
                engine=spec,
                state=SessionState(budget=budget),
                search_attributes=search_attributes,
                # The waiting attribute only where all of geppetto's are registered.
                features=[*SESSION_FEATURES, *([WAITING_ATTRIBUTE] if search_attributes else [])],
                payload_limit=None if _has_external_storage(client) else SESSION_CARRY_LIMIT,
            ),
            dict(
                id=session_id,
                task_queue=task_queue,
                id_conflict_policy=(
                    WorkflowIDConflictPolicy.USE_EXISTING
                    if reuse_existing
                    else WorkflowIDConflictPolicy.FAIL
                ),
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                # Static: the engine may change later (current details name the current one).
                static_summary=f"geppetto session, started on {spec.spec_string}",
                memo=dict(memo) if memo else None,
                # Set at start, so a new session is listed before its first prompt.
                search_attributes=(
                    search.initial_search_attributes(
                        provider=spec.provider, model=spec.model, now=datetime.now(UTC)
                    )
                    if search_attributes
                    else None
                ),
            ),
        )
        session = cls(client, session_id)
        session._pending_start = start
        session._output_type = _output_model(engine)
        if not lazy:
            await session._ensure_started()
        return session

    @classmethod
    async def deliver(
        cls,
        client: Client,
        session_id: str,
        prompt: str,
        *,
        engine: EngineLike,
        task_queue: str = DEFAULT_TASK_QUEUE,
        idempotency_key: str | None = None,
        source: str | None = None,
        switch_engine: bool = False,
    ) -> Session:
        """Submit `prompt` to the session, starting it on `engine` if it does not exist
        (signal-with-start: one call, whichever is the case).

        An existing session keeps its engine unless `switch_engine`. `source` names the
        sender (a schedule). A closed session raises `SessionClosedError`.
        """
        spec = _to_spec(engine)
        request = SubmitPromptRequest(
            prompt=prompt,
            idempotency_key=idempotency_key,
            engine=spec if switch_engine else None,
            source=source,
        )
        # Decided as `create` decides: a session that upserts search attributes the
        # namespace lacks fails every workflow task (BadSearchAttributes), for good.
        indexed = await search.use_search_attributes(client)
        try:
            await client.start_workflow(
                SESSION_WORKFLOW,
                SessionInput(
                    engine=spec,
                    search_attributes=indexed,
                    features=[*SESSION_FEATURES, *([WAITING_ATTRIBUTE] if indexed else [])],
                    payload_limit=None if _has_external_storage(client) else SESSION_CARRY_LIMIT,
                ),
                id=session_id,
                task_queue=task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                start_signal=SessionSignal.SUBMIT_PROMPT,
                start_signal_args=[request],
                static_summary=f"geppetto session, started on {spec.spec_string}"
                + (f" (schedule {source})" if source else ""),
            )
        except WorkflowAlreadyStartedError as err:
            # Signal-with-start only fails this way when the session exists and is closed.
            raise SessionClosedError(
                f"session {session_id} is closed; it cannot take the prompt",
                session_id=session_id,
            ) from err
        return cls(client, session_id)

    @classmethod
    async def _create_with_legacy_id(
        cls, client: Client, session_id: str, reuse_existing: bool
    ) -> Session:
        """`create` with an id outside the rules: only to reuse a session created before them."""
        check_existing_id(session_id)
        if reuse_existing:
            try:
                description = await client.get_workflow_handle(session_id).describe()
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND:
                    raise
            else:
                if description.workflow_type == SESSION_WORKFLOW:
                    if description.status != ExecutionStatus.RUNNING:
                        raise SessionClosedError(
                            f"session {session_id} is closed; choose another session id",
                            session_id=session_id,
                        )
                    return cls(client, session_id)
        check_new_session_id(session_id)  # raises: a new session needs a valid id
        raise AssertionError("unreachable")

    async def _ensure_started(self) -> None:
        """Start the workflow of a lazily created session, if not done yet."""
        start = self._pending_start
        if start is None:
            return
        try:
            await self.client.start_workflow(SESSION_WORKFLOW, start.input, **start.options)
        except WorkflowAlreadyStartedError as err:
            raise await self._already_started(err) from err
        self._pending_start = None

    async def _already_started(self, err: WorkflowAlreadyStartedError) -> Exception:
        if await self._is_open():
            return SessionError(
                f"session {self.session_id} already exists; attach to it or pass reuse_existing=True",
                session_id=self.session_id,
            )
        return SessionClosedError(
            f"session {self.session_id} is closed; choose another session id",
            session_id=self.session_id,
        )

    @classmethod
    def attach(cls, client: Client, session_id: str) -> Session:
        """A handle on an existing session; only the id's form is checked until it is used.

        Raises `InvalidSessionIdError` for an id no session can have.
        """
        return cls(client, session_id)

    async def _is_open(self) -> bool:
        try:
            description = await self._handle.describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return False
            raise
        return description.status == ExecutionStatus.RUNNING

    async def start_inference(
        self,
        prompt: str,
        *,
        engine: EngineLike | None = None,
        output_type: type[BaseModel] | None = None,
        idempotency_key: str | None = None,
    ) -> ExecutionHandle:
        """Start an inference for `prompt` and return its handle.

        Raises `SessionBusyError` while another runs, `SessionClosedError` after
        `close()`, `InvalidPromptError` for an empty prompt or one that is not
        valid text, `PromptTooLargeError` for one too large to carry (before any
        call to Temporal). `engine` switches the session's engine from this prompt on.
        `output_type` asks this prompt alone for typed output (docs/typed-output.md).
        `idempotency_key` makes a repeat of the call return the inference the first
        one started (the key names the update, which Temporal de-duplicates within
        the session's current run).
        """
        self._check_prompt(prompt)
        request = StartInferenceRequest(
            prompt=prompt,
            engine=_to_spec(engine) if engine is not None else None,
            after_inference_id=self._last_finished,
            output=build_output_spec(output_type) if output_type is not None else None,
        )
        handle = await self._start(request, _keyed_update_id(idempotency_key))
        if engine is not None:  # the session now runs this engine
            self._output_type = _output_model(engine)
        handle.output_type = output_type or self._output_type
        return handle

    async def _start(
        self, request: StartInferenceRequest, update_id: str | None = None
    ) -> ExecutionHandle:
        start = self._pending_start
        # A prompt's own output type travels in the update (the start input has no place for it).
        if (
            start is not None
            and start.takes_first_prompt
            and request.output is None
            and update_id is None
        ):
            return await self._start_with_prompt(start, request)
        try:
            response = await self._update_start(request, update_id)
        except SessionBusyError as busy:
            # The running inference may in fact be over: its result is out before
            # the session records it. If so, ask the session to wait for it.
            active = busy.active_inference_id
            if active is None or active == request.after_inference_id:
                raise
            if await ExecutionHandle(self.client, active).is_running():
                raise
            response = await self._update_start(
                request.model_copy(update={"after_inference_id": active}), update_id
            )
        return ExecutionHandle(self.client, response.inference_id, session=self)

    async def _start_with_prompt(
        self, start: _SessionStart, request: StartInferenceRequest
    ) -> ExecutionHandle:
        """Start a new session with its first prompt in the start input (no update).

        A new session is idle, open and empty, and the prompt was checked here,
        so none of the update's checks could refuse it.
        """
        session_input, options = start.with_first_prompt(request.prompt, request.engine)
        try:
            await self.client.start_workflow(SESSION_WORKFLOW, session_input, **options)
        except WorkflowAlreadyStartedError as err:
            raise await self._already_started(err) from err
        self._pending_start = None
        return ExecutionHandle(
            self.client, inference_workflow_id(self.session_id, 1), session=self, _starting=True
        )

    def _check_prompt(self, prompt: str) -> None:
        check_prompt(
            prompt, session_id=self.session_id, external_storage=_has_external_storage(self.client)
        )

    async def _update_start(
        self, request: StartInferenceRequest, update_id: str | None = None
    ) -> StartInferenceResponse:
        start = self._pending_start
        try:
            response: StartInferenceResponse
            if start is not None:
                # One call starts the session and the inference: the update is
                # handled in the workflow's first task.
                response = await self.client.execute_update_with_start_workflow(
                    SessionUpdate.START_INFERENCE,
                    request,
                    start_workflow_operation=start.with_update(),
                    id=update_id or _update_id(),
                    result_type=StartInferenceResponse,
                )
                self._pending_start = None
            else:
                response = await self._handle.execute_update(
                    SessionUpdate.START_INFERENCE,
                    request,
                    id=update_id or _update_id(),
                    result_type=StartInferenceResponse,
                )
            return response
        except WorkflowAlreadyStartedError as err:
            raise await self._already_started(err) from err
        except WorkflowUpdateFailedError as err:
            self._pending_start = None  # the update ran, so the workflow did start
            raise self._map_update_error(err) from err
        except RPCError as err:
            raise await self._map_rpc_error(err) from err

    def _map_update_error(self, err: WorkflowUpdateFailedError) -> Exception:
        cause = err.cause
        if not isinstance(cause, ApplicationError):
            return SessionError(
                f"session {self.session_id}: {cause or err}", session_id=self.session_id
            )
        if cause.type == ErrorType.SESSION_BUSY:
            details = list(cause.details)
            return SessionBusyError(
                cause.message,
                session_id=self.session_id,
                active_inference_id=str(details[0]) if details else None,
            )
        if cause.type == ErrorType.SESSION_CLOSED:
            return SessionClosedError(cause.message, session_id=self.session_id)
        if cause.type == ErrorType.INVALID_PROMPT:
            return InvalidPromptError(cause.message, session_id=self.session_id)
        if cause.type == ErrorType.PROMPT_TOO_LARGE:
            size, limit = (int(d) for d in list(cause.details)[:2])
            return PromptTooLargeError(
                cause.message, session_id=self.session_id, size=size, limit=limit
            )
        return SessionError(
            f"session {self.session_id}: {cause.message}", session_id=self.session_id
        )

    async def _map_rpc_error(self, err: RPCError) -> Exception:
        if err.status == RPCStatusCode.NOT_FOUND:
            try:
                await self._handle.describe()
            except RPCError:
                return SessionNotFoundError(
                    f"no session {self.session_id}", session_id=self.session_id
                )
            return SessionClosedError(
                f"session {self.session_id} is closed", session_id=self.session_id
            )
        if err.status in (
            RPCStatusCode.DEADLINE_EXCEEDED,
            RPCStatusCode.UNAVAILABLE,
            RPCStatusCode.CANCELLED,
            RPCStatusCode.INTERNAL,
        ) or no_poller(err):
            # Queries and updates need a worker to answer them.
            return SessionError(
                f"session {self.session_id} did not answer ({err.message or err.status.name}); "
                "is a geppetto worker running on its task queue?",
                session_id=self.session_id,
            )
        if err.status == RPCStatusCode.FAILED_PRECONDITION and "Workflow Task in failed state" in (
            err.message or ""
        ):
            # The worker cannot run the session (e.g. it lacks the codec key): say why.
            reason = await self._workflow_task_failure()
            return SessionError(
                f"session {self.session_id} cannot run: a worker failed its workflow task"
                + (f": {reason}" if reason else ""),
                session_id=self.session_id,
            )
        return err

    async def _workflow_task_failure(self) -> str | None:
        """The message of the session's latest failed workflow task, if it can be read."""
        try:
            history = await self.client.workflow_service.get_workflow_execution_history_reverse(
                GetWorkflowExecutionHistoryReverseRequest(
                    namespace=self.client.namespace,
                    execution=WorkflowExecution(workflow_id=self.session_id),
                    maximum_page_size=50,
                )
            )
            for event in history.history.events:
                if event.event_type != EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                    continue
                failure = event.workflow_task_failed_event_attributes.failure
                if failure.HasField("encoded_attributes"):
                    return str(await self.client.data_converter.decode_failure(failure))
                return failure.message
        except (RPCError, GeppettoError) as err:
            return str(err)
        return None

    async def submit_prompt(
        self,
        prompt: str,
        *,
        idempotency_key: str | None = None,
        engine: EngineLike | None = None,
        source: str | None = None,
    ) -> None:
        """Fire and forget: run `prompt` now or queue it behind the running inference.

        Repeating an `idempotency_key` never queues the prompt twice. `source` names
        who sent it (a schedule's name), shown as the `GeppettoSchedule` search attribute.
        Raises the same prompt errors as `start_inference`, before any call to Temporal.
        """
        self._check_prompt(prompt)
        await self._ensure_started()
        request = SubmitPromptRequest(
            prompt=prompt,
            idempotency_key=idempotency_key,
            engine=_to_spec(engine) if engine is not None else None,
            source=source,
        )
        try:
            await self._handle.signal(SessionSignal.SUBMIT_PROMPT, request)
        except RPCError as err:
            raise await self._map_rpc_error(err) from err

    async def set_step_mode(
        self, enabled: bool = True, *, auto_continue_seconds: float | None = None
    ) -> str | None:
        """Switch step mode on or off for the session's next prompts and its running inference.

        Returns the id of the running inference it switched too, if any.
        """
        await self._ensure_started()
        request = StepModeRequest(enabled=enabled, auto_continue_seconds=auto_continue_seconds)
        try:
            response: StepModeResponse = await self._handle.execute_update(
                SessionUpdate.SET_STEP_MODE, request, id=_update_id(), result_type=StepModeResponse
            )
            active = response.active_inference_id
        except RPCError as err:
            raise await self._map_rpc_error(err) from err
        except WorkflowUpdateFailedError as err:
            raise self._map_update_error(err) from err
        if active is not None:
            handle = ExecutionHandle(self.client, active, session=self)
            try:
                await handle.set_step_mode(enabled, auto_continue_seconds=auto_continue_seconds)
            except NotPausedError:
                pass  # it ended meanwhile: the next prompt has the new mode anyway
        return active

    async def cancel_active(self, *, inference_id: str | None = None) -> None:
        """Cancel the running inference, if any (only if it is `inference_id`, when given);
        idempotent."""
        await self._ensure_started()
        try:
            await self._handle.signal(
                SessionSignal.CANCEL_INFERENCE, CancelInferenceRequest(inference_id=inference_id)
            )
        except RPCError as err:
            raise await self._map_rpc_error(err) from err

    async def status(self, *, rpc_timeout: timedelta | None = None) -> SessionStatus:
        """Phase, active inference, queue depth, turn count and usage.

        A query needs a worker: `rpc_timeout` bounds the wait for one (a `SessionError`
        after it); `geppetto_temporal.offline` reads a session without any.
        """
        await self._ensure_started()
        try:
            status: SessionStatus = await self._handle.query(
                SessionQuery.STATUS, result_type=SessionStatus, rpc_timeout=rpc_timeout
            )
            return status
        except RPCError as err:
            raise await self._map_rpc_error(err) from err

    async def is_running(self) -> bool:
        """Whether an inference is running now."""
        return (await self.status()).active_inference_id is not None

    async def active(self) -> ExecutionHandle | None:
        """A handle on the running inference, if any."""
        active_id = (await self.status()).active_inference_id
        return ExecutionHandle(self.client, active_id, session=self) if active_id else None

    async def engine(self) -> EngineSpec:
        """The engine the next prompt will use."""
        await self._ensure_started()
        spec: EngineSpec = await self._handle.query(SessionQuery.ENGINE, result_type=EngineSpec)
        return spec

    async def prompt_by_key(self, idempotency_key: str) -> PromptLookup:
        """What became of the prompt submitted with `idempotency_key`: not received,
        queued, running or run (its inference id), or recorded without running."""
        await self._ensure_started()
        try:
            lookup: PromptLookup = await self._handle.query(
                SessionQuery.PROMPT_BY_KEY, idempotency_key, result_type=PromptLookup
            )
            return lookup
        except RPCError as err:
            raise await self._map_rpc_error(err) from err

    async def transcript(self) -> SessionTranscript:
        """The session's blocks and turn boundaries, in one query."""
        await self._ensure_started()
        try:
            transcript: SessionTranscript = await self._handle.query(
                SessionQuery.TRANSCRIPT, result_type=SessionTranscript
            )
            return transcript
        except RPCError as err:
            raise await self._map_rpc_error(err) from err

    async def events(self, *, poll_interval: float = 0.2) -> AsyncIterator[Event]:
        """Follow the session: the events of each inference in turn, as they run.

        Starts with the running inference (from its first event), or else the
        next one. Inferences are followed in order by number, so one that starts
        and ends between two looks is not missed. It never ends by itself:
        break out of it or cancel the task.
        """
        status = await self.status()
        if status.active_inference_id is not None:
            number = _inference_number(status.active_inference_id)
        else:
            number = await self._latest_inference_number() + 1
        while True:
            handle = ExecutionHandle(
                self.client, inference_workflow_id(self.session_id, number), session=self
            )
            if not await handle.exists():
                await asyncio.sleep(poll_interval)
                continue
            async for event in handle.events():
                yield event
            number += 1

    async def _latest_inference_number(self) -> int:
        for turn in reversed((await self.transcript()).turns):
            if turn.metadata.inference_id:
                return _inference_number(turn.metadata.inference_id)
        return 0

    async def turns(self) -> list[Turn]:
        """One cumulative turn per prompt, oldest first."""
        return (await self.transcript()).to_turns()

    async def latest(self) -> Turn | None:
        """The latest turn, if any."""
        turns = await self.turns()
        return turns[-1] if turns else None

    async def close(self, *, cancel_active: bool = False) -> SessionSummary:
        """Stop taking prompts and end the session once queued prompts have run.

        With `cancel_active`, the running inference is cancelled and queued
        prompts are recorded as cancelled turns instead of running.
        """
        await self._ensure_started()
        try:
            summary: SessionSummary = await self._handle.execute_update(
                SessionUpdate.CLOSE,
                CloseRequest(cancel_active=cancel_active),
                id=_update_id(),
                result_type=SessionSummary,
            )
            return summary
        except WorkflowUpdateFailedError as err:
            raise self._map_update_error(err) from err
        except RPCError as err:
            raise await self._map_rpc_error(err) from err
