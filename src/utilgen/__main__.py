"""``python -m utilgen`` (and ``accelerate launch -m utilgen``): the command line."""

from utilgen.cli import main

main()
