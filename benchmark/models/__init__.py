"""Recommenders. Each is a plain ``nn.Module``; the Lightning task owns the loop.

What a model must implement (``score``/``score_pairs``/``rank_rows`` by eval protocol, ``loss``
when it trains) and what it may (``init_from_train``, ``train_dataset``, ``prediction_facts``,
``outputs_probabilities``) is the model contract: :mod:`benchmark.models.contract`.
"""
