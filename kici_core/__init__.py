"""KiCI orchestrator domain core.

Pure Python: no network, database, filesystem, environment or clock access. Every module here can be
embedded in other tools; see ``docs/embedding.md``.
"""
