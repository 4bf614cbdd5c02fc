"""`python -m tune_siamese ...` is the `tune-siamese` console script."""
import sys

from .cli import main

sys.exit(main())
