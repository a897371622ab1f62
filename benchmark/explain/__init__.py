"""``llm4rec explain``: one-sentence explanations of recommendations, checked, scored and stored.

Modules: :mod:`~benchmark.explain.pairs` (which (user, item) pairs: a first-stage run's top-1 item
or the held-out test item, for a seeded subset of test users), :mod:`~benchmark.explain.references`
(review texts of a dataset, where it has them), :mod:`~benchmark.explain.runner` (the run: config,
generation, checks, judge, record) and :mod:`~benchmark.explain.record` (the stored run, its
metrics and their recomputation from the stored file).
"""
