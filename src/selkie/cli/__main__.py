"""`python -m selkie.cli`, as the tests run it."""

from selkie.cli import main

main()
