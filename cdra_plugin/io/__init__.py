"""Durable files: strict JSON Lines input, resumable outputs, all-or-nothing sets of files, a bounded job pool.

- ``jsonl``: ``read_rows`` (errors name file:line), ``resume_rows`` and ``Appender`` (fsync'ed records)
- ``writer``: ``AtomicFiles``, a set of output files committed together or not at all
- ``pool``: ``for_each``, N asyncio jobs in flight over a list
"""
