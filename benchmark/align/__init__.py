"""Preference alignment after SFT: DPO, S-DPO, GRPO and prompt-guided rewards (PGRM).

An alignment stage starts from the weights of a trained SFT run (its parent, checked by split
fingerprint and model config in :mod:`benchmark.align.parent`), optimises one of the losses of
:mod:`benchmark.align.losses` against a frozen reference (the SFT weights), and traces every step
(:mod:`benchmark.align.trace`). Negatives come from :mod:`benchmark.align.negatives`, rewards
from :mod:`benchmark.align.rewards`; the loop is :mod:`benchmark.align.task` (P5-style
generators) or :mod:`benchmark.align.yesno` (TALLRec-style DPO); :mod:`benchmark.align.stage`
is what a run with ``align=<method>`` calls.
"""
