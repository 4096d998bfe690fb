"""Label routing: which agents may run a job, and which of them gets it.

A job selects agents with two lists of label matchers taken from its lock-file entry, ``runsOn``
(required) and ``excludeLabels``. A matcher is ``{"kind": "exact", "value": str}`` (a literal,
case-sensitive label) or ``{"kind": "regex", "source": str, "flags": str}`` (a JavaScript regular
expression applied as an unanchored search). An agent qualifies when:

1. every exact required value is one of its labels;
2. every required regex matches at least one of its labels;
3. no exact exclude value is one of its labels;
4. no exclude regex matches any of its labels;
5. every mandatory label (taint) of the agent is among the job's exact required values.

Capacity is separate: :func:`choose_agent` considers only agents with a free slot and takes the
least loaded one, ties going to the agent idle longest.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from kici_core import errors
from kici_core.jsregex import compile_js_regex

__all__ = [
    "AgentLabels",
    "Candidate",
    "JobSelector",
    "WaitExplanation",
    "agent_eligible",
    "choose_agent",
    "compile_js_regex",
    "compile_selector",
    "derived_labels",
    "explain_waiting",
    "is_eligible",
]


# --------------------------------------------------------------------------------------------
# Agent label sets


def derived_labels(platform: str | None, arch: str | None) -> frozenset[str]:
    """The ``kici:os:*`` / ``kici:arch:*`` labels implied by ``agent.register``'s platform and arch.

    The mapping is the one the upstream agent applies to itself: ``darwin`` gives ``kici:os:macos``
    and ``kici:os:darwin``, ``win32`` gives ``kici:os:windows`` and ``kici:os:win32``, ``x64`` gives
    ``kici:arch:x64`` and ``kici:arch:amd64``; any other value ``v`` gives ``kici:os:v`` /
    ``kici:arch:v``. An absent (``None`` or empty) field derives nothing.
    """
    out: set[str] = set()
    if platform:
        if platform == "darwin":
            out.update(("kici:os:macos", "kici:os:darwin"))
        elif platform == "win32":
            out.update(("kici:os:windows", "kici:os:win32"))
        else:
            out.add(f"kici:os:{platform}")
    if arch:
        if arch == "x64":
            out.update(("kici:arch:x64", "kici:arch:amd64"))
        else:
            out.add(f"kici:arch:{arch}")
    return frozenset(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentLabels:
    """What routing knows about one agent: its labels, taints, and platform facts.

    ``labels`` are the wire labels of ``agent.register`` (duplicates collapse). ``effective`` adds
    the labels derived from ``platform`` / ``arch`` (:func:`derived_labels`); routing always uses
    ``effective``. ``mandatory_labels`` is the taint set (from a token or scaler).
    """

    labels: frozenset[str]
    mandatory_labels: frozenset[str] = frozenset()
    platform: str | None = None
    arch: str | None = None
    effective: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Accept any iterable of strings at construction; store frozensets.
        labels = frozenset(self.labels)
        mandatory = frozenset(self.mandatory_labels)
        for name in (*labels, *mandatory):
            if not isinstance(name, str) or not name:
                raise errors.InvalidInput(f"agent labels must be non-empty strings, got {name!r}")
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "mandatory_labels", mandatory)
        object.__setattr__(self, "effective", labels | derived_labels(self.platform, self.arch))


# --------------------------------------------------------------------------------------------
# Job selectors


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSelector:
    """A job's compiled ``runsOn`` / ``excludeLabels``, ready for repeated eligibility checks.

    ``required_patterns`` / ``exclude_patterns`` keep the JS ``(source, flags)`` pairs; the compiled
    patterns come from the shared cache.
    """

    required_exact: frozenset[str] = frozenset()
    required_patterns: tuple[tuple[str, str], ...] = ()
    exclude_exact: frozenset[str] = frozenset()
    exclude_patterns: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for source, flags in (*self.required_patterns, *self.exclude_patterns):
            compile_js_regex(source, flags)  # fail at construction, not at dispatch

    def admits(self, agent: AgentLabels) -> bool:
        """True when ``agent`` qualifies for a job with this selector (capacity not considered)."""
        labels = agent.effective
        if not self.required_exact <= labels:
            return False
        if not agent.mandatory_labels <= self.required_exact:
            return False
        if not self.exclude_exact.isdisjoint(labels):
            return False
        for source, flags in self.required_patterns:
            pattern = compile_js_regex(source, flags)
            if not any(pattern.search(label) for label in labels):
                return False
        for source, flags in self.exclude_patterns:
            pattern = compile_js_regex(source, flags)
            if any(pattern.search(label) for label in labels):
                return False
        return True

    def describe(self) -> str:
        """A short human description, e.g. ``runsOn [linux, /^gpu-/i] exclude [flaky]``."""
        req = [*sorted(self.required_exact), *(f"/{s}/{f}" for s, f in self.required_patterns)]
        exc = [*sorted(self.exclude_exact), *(f"/{s}/{f}" for s, f in self.exclude_patterns)]
        text = f"runsOn [{', '.join(req)}]"
        return f"{text} exclude [{', '.join(exc)}]" if exc else text


def _split_matchers(
    matchers: Sequence[Mapping[str, object]], what: str
) -> tuple[frozenset[str], tuple[tuple[str, str], ...]]:
    exact: set[str] = set()
    patterns: list[tuple[str, str]] = []
    for index, matcher in enumerate(matchers):
        kind = matcher.get("kind")
        if kind == "exact":
            value = matcher.get("value")
            if not isinstance(value, str):
                raise errors.InvalidInput(f"{what}[{index}]: exact matcher needs a string 'value'")
            exact.add(value)
        elif kind == "regex":
            source, flags = matcher.get("source"), matcher.get("flags", "")
            if not isinstance(source, str) or not isinstance(flags, str):
                raise errors.InvalidInput(f"{what}[{index}]: regex matcher needs string 'source' and 'flags'")
            if (source, flags) not in patterns:
                patterns.append((source, flags))
        else:
            # A matcher without a kind (old lock file) is an error, never a match-anything.
            raise errors.InvalidInput(f"{what}[{index}]: label matcher kind must be 'exact' or 'regex'")
    return frozenset(exact), tuple(patterns)


def compile_selector(
    required: Sequence[Mapping[str, object]], exclude: Sequence[Mapping[str, object]] = ()
) -> JobSelector:
    """Build a :class:`JobSelector` from lock-file matcher lists.

    Raises:
        InvalidInput: a matcher has no/unknown ``kind``, a missing field, or an unsupported regex.
    """
    req_exact, req_patterns = _split_matchers(required, "runsOn")
    exc_exact, exc_patterns = _split_matchers(exclude, "excludeLabels")
    return JobSelector(
        required_exact=req_exact,
        required_patterns=req_patterns,
        exclude_exact=exc_exact,
        exclude_patterns=exc_patterns,
    )


def agent_eligible(
    required: Sequence[Mapping[str, object]],
    exclude: Sequence[Mapping[str, object]],
    agent: AgentLabels,
) -> bool:
    """Whether ``agent`` may run a job with these ``runsOn`` / ``excludeLabels`` matchers.

    Capacity is not considered. An empty ``required`` list admits every agent without a taint.

    Raises:
        InvalidInput: a matcher is malformed (see :func:`compile_selector`).
    """
    return compile_selector(required, exclude).admits(agent)


# --------------------------------------------------------------------------------------------
# Choosing an agent


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """One connected agent as seen by :func:`choose_agent`.

    ``idle_since`` is when the agent last started or finished a job (or registered); the smallest
    value has been idle longest.
    """

    agent_id: str
    labels: AgentLabels
    active_jobs: int
    max_concurrency: int
    idle_since: float
    accepting: bool = True

    @property
    def has_capacity(self) -> bool:
        """True while the agent runs fewer jobs than its ``maxConcurrency``."""
        return self.accepting and self.active_jobs < self.max_concurrency


@functools.lru_cache(maxsize=65536)
def is_eligible(selector: JobSelector, agent: AgentLabels) -> bool:
    """Cached :meth:`JobSelector.admits` (both arguments are immutable and hashable)."""
    return selector.admits(agent)


def _load_key(c: Candidate) -> tuple[Fraction, float, str]:
    return (Fraction(c.active_jobs, max(c.max_concurrency, 1)), c.idle_since, c.agent_id)


def choose_agent(candidates: Iterable[Candidate], selector: JobSelector) -> str | None:
    """Pick the agent for one job, or ``None`` when no eligible agent has a free slot.

    Among eligible agents with ``active_jobs < max_concurrency``, the one with the smallest share
    of its capacity in use wins; ties go to the agent idle longest (smallest ``idle_since``), then
    to the smallest ``agent_id`` (code-point order) so the choice is deterministic.
    """
    best: Candidate | None = None
    for cand in candidates:
        if not cand.has_capacity or not is_eligible(selector, cand.labels):
            continue
        if best is None or _load_key(cand) < _load_key(best):
            best = cand
    return None if best is None else best.agent_id


# --------------------------------------------------------------------------------------------
# "Why is my job waiting?"


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitExplanation:
    """Why a job is not running yet, given the agents currently connected.

    ``unmatched_required`` lists required matchers (as text) that *no* connected agent satisfies;
    ``eligible`` the agents that qualify (all busy when non-empty); ``excluded`` / ``tainted`` the
    agents that would qualify but for an exclude matcher / a mandatory label the job does not name;
    ``held`` the eligible agents that rejected a dispatch as busy and get no job until they report a
    free slot.
    """

    eligible: tuple[str, ...]
    unmatched_required: tuple[str, ...]
    excluded: tuple[str, ...]
    tainted: tuple[str, ...]
    agent_count: int
    held: tuple[str, ...] = ()

    @property
    def message(self) -> str:
        """One human sentence summarising the explanation."""
        if self.agent_count == 0:
            return "no agent is connected"
        if self.eligible:
            text = f"all eligible agents are busy: {', '.join(self.eligible)}"
            if self.held:
                text += (
                    f" ({', '.join(self.held)} rejected a dispatch as busy;"
                    " no job goes there until it reports a free slot)"
                )
            return text
        parts: list[str] = []
        if self.unmatched_required:
            parts.append(f"no connected agent has {', '.join(self.unmatched_required)}")
        if self.excluded:
            parts.append(f"excluded by excludeLabels: {', '.join(self.excluded)}")
        if self.tainted:
            parts.append(f"mandatory labels not requested: {', '.join(self.tainted)}")
        if not parts:
            parts.append("no single connected agent has all the required labels")
        return "; ".join(parts)


def explain_waiting(
    selector: JobSelector, agents: Mapping[str, AgentLabels], *, held: Iterable[str] = ()
) -> WaitExplanation:
    """Explain why no connected agent (``agent_id -> labels``) takes a job with ``selector``;
    ``held`` names the agents that rejected a dispatch as busy and are left alone for now."""
    eligible = sorted(a for a, labels in agents.items() if selector.admits(labels))
    all_labels: set[str] = set()
    for labels in agents.values():
        all_labels |= labels.effective
    unmatched = [f"'{v}'" for v in sorted(selector.required_exact - all_labels)]
    for source, flags in selector.required_patterns:
        pattern = compile_js_regex(source, flags)
        if not any(pattern.search(label) for label in all_labels):
            unmatched.append(f"a label matching /{source}/{flags}")
    # Agents that meet the positive requirements but fail an exclude matcher or a taint.
    positive = JobSelector(required_exact=selector.required_exact, required_patterns=selector.required_patterns)
    excluded: list[str] = []
    tainted: list[str] = []
    held_set = frozenset(held)
    for agent_id, labels in sorted(agents.items()):
        untainted = AgentLabels(labels=labels.effective)
        if agent_id in eligible or not positive.admits(untainted):
            continue
        (tainted if selector.admits(untainted) else excluded).append(agent_id)
    return WaitExplanation(
        eligible=tuple(eligible),
        unmatched_required=tuple(unmatched),
        excluded=tuple(excluded),
        tainted=tuple(tainted),
        agent_count=len(agents),
        held=tuple(a for a in eligible if a in held_set),
    )
