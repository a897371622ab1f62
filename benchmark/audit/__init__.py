"""``llm4rec audit``: leakage and index quality of a split, its item indexes, or external files.

Modules: :mod:`~benchmark.audit.table` (the parts as arrays), :mod:`~benchmark.audit.findings`
(severities and thresholds), :mod:`~benchmark.audit.timeline`, :mod:`~benchmark.audit.overlap`
(overlap, duplicates, sampling, labels), :mod:`~benchmark.audit.identifiers` and
:mod:`~benchmark.audit.semantic` (item indexes), :mod:`~benchmark.audit.external` (file layouts),
:mod:`~benchmark.audit.report` (the whole audit, its text and JSON),
:mod:`~benchmark.audit.command` (``llm4rec audit``'s arguments), :mod:`~benchmark.audit.summary`
(the summary a run record carries and validate checks) and :mod:`~benchmark.audit.committed`
(the committed audits under ``results/audit``).
"""
