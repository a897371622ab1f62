"""Recommenders. Each is a plain ``nn.Module``; the Lightning task owns the loop.

A ranking model implements ``score(users [B]) -> [B, n_items]`` and
``score_pairs(users [B], items [B, C]) -> [B, C]``; a trainable one also
``loss(batch) -> scalar``; one that reads statistics of the train part implements
``init_from_train(users, items)``.
"""
