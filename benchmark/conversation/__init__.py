"""Conversational recommendation: sessions between a recommender and a user simulator (``llm4rec converse``).

Each test row of a split is a session whose hidden target is the row's target item. For at most
``turns`` turns the recommender asks one question (genre, decade, a similar movie) or recommends
``k`` items; the simulator answers from the target's metadata and accepts a list that holds the
target. Modules, lowest first:

- :mod:`~benchmark.conversation.catalogue`: item titles, years and genres; what a user's text
  reveals; the leakage check; titles grounded to catalogue items.
- :mod:`~benchmark.conversation.protocol`: actions, utterances, the protocol settings and one
  session's loop.
- :mod:`~benchmark.conversation.metrics`: success@t, turns to success, recall@k per turn,
  hallucination, repeated questions, prompt tokens, recomputed from stored dialogues.
- :mod:`~benchmark.conversation.storage`: the run folder (``record.json`` + ``dialogues.jsonl.gz``),
  read back within limits and checked.
- :mod:`~benchmark.conversation.lm`: causal-LM helpers (prompts, option choice, title beams).
- :mod:`~benchmark.conversation.simulators`: the rule and LLM user simulators.
- :mod:`~benchmark.conversation.recommenders`: classic rankers in the loop, the LLM
  recommender and the hybrid.
- :mod:`~benchmark.conversation.runner`: one configured run, from config to written record.
"""
