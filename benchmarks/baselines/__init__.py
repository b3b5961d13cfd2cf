"""The peers streamsend is measured against: what a user would otherwise write.

Each baseline is a standalone script (`python -m benchmarks.baselines.NAME INPUT --base-url URL
--from LIST --outcomes OUT [--stats PATH]`, the API key in `TRACKLY_API_KEY`) that sends every
input line once and writes one outcome line per input line. Neither validates input, retries,
paces or journals: they are the cost floor of "just post the batches", not equivalents.
"""
