"""`python -m lcmvideo`: the same command line as `lcmvideo`."""

from .cli import main

main()
