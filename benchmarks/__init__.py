"""streamsend's benchmark harness: `python -m benchmarks [--quick]` (or `make bench`).

Layout: `__main__` plans a run and writes the results; `_scenarios` runs each scenario against
its own emulator process (`_emulator`), starting every client as a measured child process
(`_process`) from the command lines in `_tools`, which also checks every run; `_analysis` turns
measurements and the emulator's ledger into figures; `_targets` checks issue 12's targets
against a run's figures; `_report` prints the table and writes `results/latest.json` and
`results/latest.png`; `_profile` profiles streamsend on loopback.
`baselines/` holds the peers streamsend is compared with. Generated inputs, logs and raw data go
to `data/` (git-ignored).
"""
