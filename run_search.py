"""Run a hyperparameter search: Ray Tune + OptunaSearch (TPE) + ASHA, then build the final model, test and export.

    python run_search.py                        # small search on the offline synthetic data
    python run_search.py --data ../shared/data/lfw-a --space default --num-samples 16
    python run_search.py --address auto --gpus-per-trial 0.25 --storage-path /shared/ray_results
    python run_search.py --resume ray_results/siamese-quick-20261128-170000

The same command is installed as `tune-siamese search`, and `tune_siamese.search(**options)` is its Python
form; all three run tune_siamese.app.search_command.
"""
import sys

from tune_siamese.app.search_command import main

if __name__ == "__main__":
    sys.exit(main())
