"""Label routing: eligibility, derived labels, regex dialect, agent choice, wait explanations."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kici_core import errors, routing
from tests.support.props import examples


def ex(value: str) -> dict[str, object]:
    return {"kind": "exact", "value": value}


def rx(source: str, flags: str = "") -> dict[str, object]:
    return {"kind": "regex", "source": source, "flags": flags}


def agent(*labels: str, mandatory: tuple[str, ...] = (), platform: str | None = None, arch: str | None = None):
    return routing.AgentLabels(
        labels=frozenset(labels), mandatory_labels=frozenset(mandatory), platform=platform, arch=arch
    )


class TestDerivedLabels:
    @pytest.mark.parametrize(
        ("platform", "arch", "expected"),
        [
            ("linux", "x64", {"kici:os:linux", "kici:arch:x64", "kici:arch:amd64"}),
            ("darwin", "arm64", {"kici:os:macos", "kici:os:darwin", "kici:arch:arm64"}),
            ("win32", "ia32", {"kici:os:windows", "kici:os:win32", "kici:arch:ia32"}),
            ("freebsd", None, {"kici:os:freebsd"}),
            (None, "riscv64", {"kici:arch:riscv64"}),
            (None, None, set()),
            ("", "", set()),
        ],
    )
    def test_mapping(self, platform, arch, expected):
        assert routing.derived_labels(platform, arch) == expected

    def test_effective_labels_add_derived_ones_idempotently(self):
        a = agent("gpu", "kici:os:linux", platform="linux", arch="x64")
        assert a.effective == {"gpu", "kici:os:linux", "kici:arch:x64", "kici:arch:amd64"}
        assert a.labels == {"gpu", "kici:os:linux"}

    def test_derived_labels_route(self):
        assert routing.agent_eligible([ex("kici:os:macos")], [], agent("x", platform="darwin"))
        assert not routing.agent_eligible([ex("kici:os:macos")], [], agent("x"))

    def test_rejects_empty_label(self):
        with pytest.raises(errors.InvalidInput):
            agent("")


class TestEligibility:
    def test_superset_and_case_sensitivity(self):
        a = agent("linux", "docker", "extra")
        assert routing.agent_eligible([ex("linux"), ex("docker")], [], a)
        assert not routing.agent_eligible([ex("linux"), ex("gpu")], [], a)
        assert not routing.agent_eligible([ex("Linux")], [], a)

    def test_empty_runs_on_matches_untainted_agents(self):
        assert routing.agent_eligible([], [], agent())
        assert not routing.agent_eligible([], [], agent("a", mandatory=("special",)))

    def test_exact_is_literal_even_with_star(self):
        assert not routing.agent_eligible([ex("box-*")], [], agent("box-1"))
        assert routing.agent_eligible([ex("box-*")], [], agent("box-*"))

    def test_regex_needs_one_matching_label_and_searches(self):
        a = agent("kici:host:box-7", "linux")
        assert routing.agent_eligible([rx("box-\\d")], [], a)
        assert routing.agent_eligible([rx("BOX", "i")], [], a)
        assert not routing.agent_eligible([rx("BOX")], [], a)
        assert not routing.agent_eligible([rx("^box")], [], a)

    def test_picomatch_style_regexes(self):
        glob = rx(r"^(?:^(?:kici\:host\:box\-[^/]*?)$)$")
        assert routing.agent_eligible([glob], [], agent("kici:host:box-12"))
        assert not routing.agent_eligible([glob], [], agent("kici:host:other"))
        canary = rx(r"^(?:(?!\.)(?=.)[^/]*?-canary)$")
        assert routing.agent_eligible([canary], [], agent("eu-canary"))
        assert not routing.agent_eligible([canary], [], agent(".hidden-canary"))

    def test_excludes(self):
        a = agent("linux", "flaky")
        assert not routing.agent_eligible([ex("linux")], [ex("flaky")], a)
        assert not routing.agent_eligible([ex("linux")], [rx("^fla")], a)
        assert routing.agent_eligible([ex("linux")], [ex("slow"), rx("^zzz")], a)

    def test_mandatory_labels_need_exact_request(self):
        a = agent("gpu", "linux", mandatory=("gpu",))
        assert routing.agent_eligible([ex("gpu")], [], a)
        assert not routing.agent_eligible([ex("linux")], [], a)
        # A regex that would match the taint does not count.
        assert not routing.agent_eligible([rx("^gpu$")], [], a)

    @pytest.mark.parametrize(
        "bad", [{"value": "x"}, {"kind": "glob", "value": "x"}, {"kind": "exact"}, {"kind": "regex"}]
    )
    def test_malformed_matchers_are_errors(self, bad):
        with pytest.raises(errors.InvalidInput):
            routing.agent_eligible([bad], [], agent("x"))

    @settings(max_examples=examples(30), deadline=None)
    @given(
        labels=st.frozensets(st.sampled_from("abcdefg")),
        required=st.frozensets(st.sampled_from("abcdefg")),
        exclude=st.frozensets(st.sampled_from("abcdefg")),
    )
    def test_exact_rule_is_subset_and_disjoint(self, labels, required, exclude):
        a = agent(*labels)
        got = routing.agent_eligible([ex(x) for x in sorted(required)], [ex(x) for x in sorted(exclude)], a)
        assert got == (required <= labels and not (exclude & labels))

    @settings(max_examples=examples(30), deadline=None)
    @given(labels=st.frozensets(st.sampled_from("abcde")), extra=st.frozensets(st.sampled_from("vwxyz")))
    def test_extra_labels_never_hurt(self, labels, extra):
        req = [ex(x) for x in sorted(labels)]
        assert routing.agent_eligible(req, [], agent(*labels))
        assert routing.agent_eligible(req, [], agent(*(labels | extra)))


class TestJsRegex:
    def test_dollar_is_end_of_input_without_m(self):
        assert routing.compile_js_regex("a$", "").search("a\n") is None
        assert routing.compile_js_regex("a$", "m").search("a\nb") is not None

    def test_named_groups_and_backrefs(self):
        p = routing.compile_js_regex(r"(?<x>ab)\k<x>", "")
        assert p.search("zabab") is not None
        assert p.search("abba") is None

    def test_digit_is_ascii(self):
        assert routing.compile_js_regex(r"^\d$", "").search("٣") is None
        assert routing.compile_js_regex(r"^[\d]$", "").search("7") is not None

    def test_js_only_classes(self):
        assert routing.compile_js_regex("a[^]b", "").search("a\nb") is not None
        assert routing.compile_js_regex("a[]", "").search("a") is None

    def test_class_literals_do_not_warn(self):
        assert routing.compile_js_regex("[[&|~]", "").search("&") is not None

    def test_stateful_flags_are_ignored(self):
        p = routing.compile_js_regex("x", "gy")
        assert p.search("x") and p.search("x")

    @pytest.mark.parametrize(("source", "flags"), [("a", "q"), ("(", ""), ("\\p{L}", "u"), ("[a", "")])
    def test_unsupported_or_broken(self, source, flags):
        with pytest.raises(errors.InvalidInput):
            routing.compile_js_regex(source, flags)


def cand(agent_id, active, maxc, idle, labels=("l",), accepting=True):
    return routing.Candidate(
        agent_id=agent_id,
        labels=agent(*labels),
        active_jobs=active,
        max_concurrency=maxc,
        idle_since=idle,
        accepting=accepting,
    )


class TestChooseAgent:
    sel = routing.compile_selector([ex("l")])

    def test_least_loaded_wins(self):
        assert routing.choose_agent([cand("a", 2, 4, 0), cand("b", 1, 4, 5)], self.sel) == "b"

    def test_load_is_share_of_capacity(self):
        assert routing.choose_agent([cand("a", 1, 2, 0), cand("b", 1, 8, 5)], self.sel) == "b"

    def test_ties_go_to_longest_idle_then_id(self):
        assert routing.choose_agent([cand("a", 0, 1, 9), cand("b", 0, 1, 3)], self.sel) == "b"
        assert routing.choose_agent([cand("b", 0, 1, 3), cand("a", 0, 1, 3)], self.sel) == "a"

    def test_full_ineligible_or_draining_agents_are_skipped(self):
        cands = [cand("a", 1, 1, 0), cand("b", 0, 1, 0, labels=("z",)), cand("c", 0, 1, 0, accepting=False)]
        assert routing.choose_agent(cands, self.sel) is None

    @settings(max_examples=examples(30), deadline=None)
    @given(
        st.lists(
            st.tuples(st.integers(0, 4), st.integers(1, 4), st.integers(0, 100), st.booleans()),
            min_size=1,
            max_size=6,
        )
    )
    def test_choice_is_minimal_among_available(self, specs):
        cands = [
            cand(f"a{i}", act, mx, idle, labels=("l",) if ok else ("x",)) for i, (act, mx, idle, ok) in enumerate(specs)
        ]
        available = [c for c in cands if c.active_jobs < c.max_concurrency and "l" in c.labels.labels]
        got = routing.choose_agent(cands, self.sel)
        if not available:
            assert got is None
            return
        chosen = next(c for c in cands if c.agent_id == got)
        assert chosen in available
        for c in available:
            assert c.active_jobs * chosen.max_concurrency >= chosen.active_jobs * c.max_concurrency


class TestExplainWaiting:
    def test_no_agents(self):
        e = routing.explain_waiting(routing.compile_selector([ex("gpu")]), {})
        assert e.message == "no agent is connected"

    def test_names_missing_labels(self):
        sel = routing.compile_selector([ex("gpu"), ex("linux"), rx("^cuda-")])
        e = routing.explain_waiting(sel, {"a": agent("linux"), "b": agent("linux", "x")})
        assert e.unmatched_required == ("'gpu'", "a label matching /^cuda-/")
        assert "no connected agent has 'gpu'" in e.message

    def test_split_labels_excludes_taints_and_busy(self):
        sel = routing.compile_selector([ex("a"), ex("b")], [ex("bad")])
        e = routing.explain_waiting(
            sel,
            {
                "x": agent("a"),
                "y": agent("b"),
                "z": agent("a", "b", "bad"),
                "t": agent("a", "b", mandatory=("m",)),
            },
        )
        assert e.unmatched_required == ()
        assert e.excluded == ("z",)
        assert e.tainted == ("t",)
        busy = routing.explain_waiting(sel, {"w": agent("a", "b")})
        assert busy.eligible == ("w",)
        assert "busy" in busy.message
        split = routing.explain_waiting(sel, {"x": agent("a"), "y": agent("b")})
        assert split.message == "no single connected agent has all the required labels"
