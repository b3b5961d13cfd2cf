"""streamsend: stream NDJSON into the Trackly SMS bulk API, one outcome per input line.

How data flows (one module per stage, bounded queues of batches between them):

    _source    NDJSON files / stdin, read in large chunks, split into numbered lines
    _validate  each line -> a Message (normalised, encoded for the wire) or an `invalid` Outcome
    _batcher   Messages -> Batches (one sender, <= 1,000 messages, < 5,000,000 bytes, linger)
    _sender    Batches -> HTTP requests (aiohttp), paced per sender (aiolimiter), retried safely
    _outcomes  every Message and invalid line -> exactly one Outcome record
    _journal   write-ahead record of what each request carries, for crash-safe --resume
    _pipeline  wires the stages together; _cli and _config are the command line around it;
               _api is the same pipeline fed from Python (StreamSender)

`streamsend.emulator` is a faithful local Trackly service for demos, tests and benchmarks.
"""

from streamsend._api import StreamSender
from streamsend._config import Settings, load_settings
from streamsend._exceptions import (
    ConfigError,
    FatalServiceError,
    InputError,
    MaybeSent,
    NotSent,
    RateLimited,
    Refused,
    SendError,
    StreamsendError,
)
from streamsend._models import Batch, Encoding, Message, Outcome, Status
from streamsend._pipeline import Pipeline, RunResult
from streamsend._segments import count_segments
from streamsend._stats import RunStats, StatsSnapshot
from streamsend._validate import Validator, normalise_phone

__all__ = [
    "Batch",
    "ConfigError",
    "Encoding",
    "FatalServiceError",
    "InputError",
    "MaybeSent",
    "Message",
    "NotSent",
    "Outcome",
    "Pipeline",
    "RateLimited",
    "Refused",
    "RunResult",
    "RunStats",
    "SendError",
    "Settings",
    "StatsSnapshot",
    "Status",
    "StreamSender",
    "StreamsendError",
    "Validator",
    "count_segments",
    "load_settings",
    "normalise_phone",
]
