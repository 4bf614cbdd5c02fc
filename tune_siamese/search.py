"""The Ray layer's old name. Experiments saved before it became tuning.py hold Tune's state pickled by module path
(the searcher, the search generator, the callbacks: `tune_siamese.search.X`), so resuming or finalizing them
imports this name: it is the tuning module itself. (The package keeps `tune_siamese.search` the API function.)"""
import sys

from . import tuning

sys.modules[__name__] = tuning
