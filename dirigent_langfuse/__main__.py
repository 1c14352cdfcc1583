"""`python -m dirigent_langfuse` runs the `dirigent-langfuse` command."""

import sys

from .cli import main

sys.exit(main())
