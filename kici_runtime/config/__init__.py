"""Configuration: the variable table, the sources (environment, YAML file) and the typed settings.

``vars`` is the table of every ``KICI_*`` variable, ``source`` reads the environment and the YAML file
through it (with the unknown-variable guard), ``settings`` resolves the server's ``Settings`` and checks
the mode against the credentials, ``admin`` reads ``kici-admin``'s own settings, ``docs`` renders the
reference page. This ``__init__`` imports nothing, so ``kici-admin`` takes ``admin`` without the server's
adapters.
"""
