"""`python -m tune_siamese ...` is the `tune-siamese` console script."""
import sys

from tune_siamese.app.cli import main

sys.exit(main())
