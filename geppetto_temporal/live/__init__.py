"""Live deltas: a side channel from the worker running an LLM step to the inference's readers.

The durable stream (Temporal Workflow Streams) keeps every completed event and
coarse `partial` batches; the text as it streams goes from the step's worker to
readers over this channel, so watching and streaming cost no history. See
docs/events.md for the design and its measured cost.
"""

from geppetto_temporal.live._hub import LiveHub, LiveStep
from geppetto_temporal.live._reader import LiveAdvert, LiveDelta, find_live_steps, read_live
from geppetto_temporal.live._server import LiveConfig, LiveServer

__all__ = [
    "LiveAdvert",
    "LiveConfig",
    "LiveDelta",
    "LiveHub",
    "LiveServer",
    "LiveStep",
    "find_live_steps",
    "read_live",
]
