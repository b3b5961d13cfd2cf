"""streamsend: stream NDJSON into the Trackly SMS bulk API, one outcome per input line.

How data flows (one module per stage, bounded queues of batches between them):

    _source    NDJSON files / stdin, read in large chunks, split into numbered lines
    _validate  each line -> a Message (normalised, encoded for the wire) or an `invalid` Outcome
    _batcher   Messages -> Batches (one sending number, <= 1,000 messages, < 5,000,000 bytes)
    _dispatch  Batches -> HTTP requests (aiohttp), in three parts:
      _lanes     per sending number: queue, pacing (_pacing), 429 pause; shared request slots
      _attempts  one request and its retries: what each answer proves (_protocol)
      _recorder  each request's journal records, outcomes and stats
    _outcomes  every Message and invalid line -> exactly one Outcome record
    _journal   write-ahead record of what each request carries, for crash-safe --resume
    _pipeline  wires the stages together for one run; _run assembles a run (open_run)

Around them: _types (the shared aliases, `ExitCode`, and the four seams as Protocols: LineSource,
OutcomeSink, Journal, RateLimiter), _protocol (the Trackly wire format of each API version),
_models (the records), _exceptions, _config, _durable (fsync and torn lines), _segments, _stats,
_logs, _metrics, _progress; _cli (the command table), _usage (what every command's parser shares),
_check and _demo (commands); _api (`Client`: the same run fed from Python).

Scale-out (many workers on one job in Redis): _enqueue (validated lines -> a job's streams),
_worker (takes entries, sends them through the same dispatcher), _collect (a job's outcomes and
status), _job_cli (the enqueue, worker, collect and job commands); _redis_job (a job's keys and
atomic scripts: leases, fencing, "request started", commit), _redis_seams (a worker's Journal and
OutcomeSink), _redis_limiter (one GCRA rate per sending number across workers).
`streamsend.emulator` is a faithful local Trackly service; `streamsend.testing` is the public test
kit (no production module imports it).
"""

from streamsend._api import Client
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
from streamsend._run import Run, open_run
from streamsend._segments import count_segments
from streamsend._stats import RunStats, StatsSnapshot
from streamsend._types import (
    ExitCode,
    Journal,
    LineBlock,
    LineSource,
    OutcomeSink,
    RateLimiter,
)
from streamsend._validate import Validator, normalise_phone

__all__ = [
    "Batch",
    "Client",
    "ConfigError",
    "Encoding",
    "ExitCode",
    "FatalServiceError",
    "InputError",
    "Journal",
    "LineBlock",
    "LineSource",
    "MaybeSent",
    "Message",
    "NotSent",
    "Outcome",
    "OutcomeSink",
    "Pipeline",
    "RateLimited",
    "RateLimiter",
    "Refused",
    "Run",
    "RunResult",
    "RunStats",
    "SendError",
    "Settings",
    "StatsSnapshot",
    "Status",
    "StreamsendError",
    "Validator",
    "count_segments",
    "load_settings",
    "normalise_phone",
    "open_run",
]
