"""GitHub App provider: ``client`` (HTTP + retries), ``app`` (JWT, installation tokens), ``lockfiles``
(contents API + cache), ``changes`` (compare / PR files), ``signature`` (``X-Hub-Signature-256``) and
``provider`` (the core's lock-file, changed-files and clone-token ports over all of them)."""
