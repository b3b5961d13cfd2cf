"""`python -m streamsend.emulator`: the same as `streamsend emulator`."""

import sys

from streamsend.emulator._command import emulator_main

if __name__ == "__main__":
    sys.exit(emulator_main(sys.argv[1:]))
