"""streamsend: stream NDJSON into the Trackly SMS bulk API, one outcome per input line.

How data flows (one module per stage, bounded queues of batches between them):

    _source    files / stdin, read in large chunks, split into numbered lines; per input:
      _formats     which format (NDJSON, CSV, TSV) and compression (gzip, zstd) it is in
      _csv_source  CSV/TSV records -> NDJSON lines, each at its record's first line
      _template    --template: each record's body rendered from its fields
    _validate  each line -> a Message (normalised, encoded for the wire) or an `invalid` Outcome;
               runs of plain lines are proved together and stay columns (_columns: a block's
               messages field by field) to the request body, the journal and the outcomes file
    _campaign  which Messages go: sort_out -> `suppressed` (_suppress: the opt-out list),
               `duplicate` (_dedupe), `expired` (_expiry: also checked before each attempt)
    _batcher   Messages -> Batches (one sending number, <= 1,000 messages, < 5,000,000 bytes)
    _dispatch  Batches -> HTTP requests (aiohttp), in three parts:
      _lanes     per sending number: queue, pacing (_pacing), 429 pause; shared request slots
                 (_concurrency: fixed, or adapted to latency and 429/503 answers)
      _attempts  one request and its retries: what each answer proves (_protocol); aiohttp
                 comes from _http, imported without loading the CA store twice
      _recorder  each request's journal records, outcomes and stats
    _outcomes  every Message and invalid line -> exactly one Outcome record
    _journal   write-ahead record of what each request carries, for crash-safe --resume
               (_fingerprint: what each input's lines were, so --resume refuses another input)
    _pipeline  wires the stages together for one run; _run assembles a run (open_run)

Around them: _types (the shared aliases, `ExitCode`, and the four seams as Protocols: LineSource,
OutcomeSink, Journal, RateLimiter), _protocol (the Trackly wire format of each API version),
_models (the records), _exceptions, _config, _durable (fsync and torn lines), _segments, _stats,
_logs, _metrics, _progress; _cli (the command table), _usage (what every command's parser shares),
_check and _demo (commands); _api (`Client`: the same run fed from Python).

Scale-out (many workers on one job in Redis): _enqueue (validated lines -> a job's streams),
_worker (takes entries, sends them through the same dispatcher), _collect (a job's outcomes and
status), _job_cli (the enqueue, worker, collect and job commands), _demo_cluster (`demo
--workers`); _redis_job (a job's keys and atomic scripts: leases, fencing, "request started",
commit), _redis_seams (a worker's Journal and OutcomeSink), _redis_limiter (one GCRA rate per
sending number across workers).
`streamsend.emulator` is a faithful local Trackly service; `streamsend.testing` is the public test
kit (no production module imports it).
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
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

#: Where each public name lives. The package imports none of them until one is asked for: the
#: command line imports `streamsend._cli` (and so this package) on every run, and `--help` must
#: not pay for aiohttp, the pipeline and the emulator (PEP 562 module `__getattr__`).
_EXPORTS: dict[str, str] = {
    "Batch": "streamsend._models",
    "Client": "streamsend._api",
    "ConfigError": "streamsend._exceptions",
    "Encoding": "streamsend._models",
    "ExitCode": "streamsend._types",
    "FatalServiceError": "streamsend._exceptions",
    "InputError": "streamsend._exceptions",
    "Journal": "streamsend._types",
    "LineBlock": "streamsend._types",
    "LineSource": "streamsend._types",
    "MaybeSent": "streamsend._exceptions",
    "Message": "streamsend._models",
    "NotSent": "streamsend._exceptions",
    "Outcome": "streamsend._models",
    "OutcomeSink": "streamsend._types",
    "Pipeline": "streamsend._pipeline",
    "RateLimited": "streamsend._exceptions",
    "RateLimiter": "streamsend._types",
    "Refused": "streamsend._exceptions",
    "Run": "streamsend._run",
    "RunResult": "streamsend._pipeline",
    "RunStats": "streamsend._stats",
    "SendError": "streamsend._exceptions",
    "Settings": "streamsend._config",
    "StatsSnapshot": "streamsend._stats",
    "Status": "streamsend._models",
    "StreamsendError": "streamsend._exceptions",
    "Validator": "streamsend._validate",
    "count_segments": "streamsend._segments",
    "load_settings": "streamsend._config",
    "normalise_phone": "streamsend._validate",
    "open_run": "streamsend._run",
}


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'streamsend' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolved once; later lookups don't come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


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
