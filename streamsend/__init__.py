"""streamsend: stream NDJSON into the Trackly SMS bulk API, one outcome per input line.

How data flows (one module per stage, bounded queues of batches between them):

    _source    NDJSON files / stdin, read in large chunks, split into lines
    _validate  each line -> a Message (normalised, encoded for the wire) or an `invalid` Outcome
    _batcher   Messages -> Batches (one sender, <= 1,000 messages, < 5,000,000 bytes, linger)
    _sender    Batches -> HTTP requests (aiohttp), paced per sender (aiolimiter), retried safely
    _outcomes  every Message and invalid line -> exactly one Outcome record
    _journal   write-ahead record of what each request carries, for crash-safe --resume
    _pipeline  wires the stages together; _cli and _config are the command line around it

`emulator` is a faithful local Trackly service for demos, tests and benchmarks.
"""
