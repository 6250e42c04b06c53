"""`python -m hf_starsse.cli`: the `hf-starsse` command."""

import sys

from .main import main

sys.exit(main())
