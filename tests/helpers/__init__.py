"""Builders shared by the test modules (tiny recipes, checkpoints, bundles, dataset writers, distillation nets).

Test modules import these (``from helpers.bundles import ...``); fixtures built on them live in conftest.py.
No test module imports another test module.
"""
