"""Durable files: strict JSON Lines input, resumable outputs, all-or-nothing sets of files, one writer per output, a
single-flight cache core, a bounded job pool.

- ``jsonl``: ``read_rows`` (errors name file:line), ``resume_rows`` and ``Appender`` (fsync'ed records)
- ``resumable``: ``ResumableOutput``, what eval generate, eval judge (and its cache), prm score and the build journal
  write: earlier work read back and skipped, new work appended, a second writer refused
- ``writer``: ``AtomicFiles``, a set of output files committed together or not at all
- ``lock``: ``hold``, the one exclusive lock (on a directory or an output file) both of them take
- ``singleflight``: ``SingleFlight``, one computation per key in front of a store (the gateway's LRU, the judge's file)
- ``pool``: ``for_each``, N asyncio jobs in flight over a list
"""
