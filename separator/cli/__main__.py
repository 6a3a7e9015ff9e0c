"""`python -m separator.cli ...` runs `separator` (e.g. under torchrun)."""

from separator.cli import console_main

console_main()
