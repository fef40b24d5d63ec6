"""The prompt grammar's limits (no recursion, nesting depth, finite weights in range) and the bounded-memory T5 token
count at submit (``flux_vector/prompt/count.py``), checked against the ComfyUI golden token sequences."""

from __future__ import annotations

import math
import threading

import pytest

from flux_vector.prompt import MAX_NESTING, MAX_WEIGHT, PromptError, check_prompt, parse_weights, weighted_pieces
from flux_vector.prompt.count import SLICE_CHARS, PromptTokenCounter, slices

from .golden import E2E_MODEL, e2e_manifest

GOLDEN = e2e_manifest()["tokenization_and_conditioning"]
T5_END = 1


@pytest.fixture(scope="module")
def counter() -> PromptTokenCounter:
    return PromptTokenCounter.from_folder(E2E_MODEL)  # the real FLUX.1-dev tokenizer files, no weights


# ------------------------------------------------------------------------------------------ grammar
@pytest.mark.parametrize("entry", GOLDEN, ids=[e["id"] for e in GOLDEN])
def test_every_golden_prompt_passes_the_limits_with_comfyuis_segments(entry):
    assert [list(s) for s in check_prompt(entry["text"])] == entry["parsed_segments"]


def test_nesting_is_parsed_without_recursion_and_limited():
    deep = "(" * 2000 + "a" + ")" * 2000  # past Python's recursion limit
    [(text, weight)] = parse_weights(deep)
    assert text == "a" and weight == pytest.approx(1.1**2000)  # ComfyUI's arithmetic, no RecursionError
    at_limit = "(" * MAX_NESTING + "a" + ")" * MAX_NESTING
    assert check_prompt(at_limit) == [("a", pytest.approx(1.1**MAX_NESTING))]
    for text in ("(" * (MAX_NESTING + 1) + "a" + ")" * (MAX_NESTING + 1), "(" * 1000 + "a" + ")" * 1000, deep):
        with pytest.raises(PromptError, match=f"nested more than {MAX_NESTING} deep"):
            check_prompt(text)
    with pytest.raises(PromptError):
        weighted_pieces("(" * 1000 + "a" + ")" * 1000)  # what the pipeline tokenizes: the same limit


def test_unclosed_parentheses_are_text_not_nesting():
    assert check_prompt("(" * 4000) == [("(" * 4000, 1.0)]
    assert check_prompt("a ((b c") == parse_weights("a ((b c")


@pytest.mark.parametrize("text", ["(a red heart:inf)", "(a:nan)", "(a:-inf)", "(a:1e308)", "(a:101)", "(a:-100.5)"])
def test_weights_must_be_finite_and_in_range(text):
    with pytest.raises(PromptError, match=f"finite number from {-MAX_WEIGHT:g} to {MAX_WEIGHT:g}"):
        check_prompt(text)


def test_weights_in_range_pass():
    assert check_prompt("(a:100) (b:-100) (c:0) (d:1e-3)") == parse_weights("(a:100) (b:-100) (c:0) (d:1e-3)")


# ------------------------------------------------------------------------------------------ token count
@pytest.mark.parametrize("entry", GOLDEN, ids=[e["id"] for e in GOLDEN])
def test_the_count_is_the_pipelines_t5_sequence_before_its_end_token(counter, entry):
    ids = [token for token, _ in entry["t5xxl"]]
    assert counter.count(entry["text"]) == ids.index(T5_END)


def test_slices_cut_at_whitespace_and_are_bounded():
    text = ("word " * 200).strip()
    parts = slices(text, SLICE_CHARS)
    assert "".join(parts) == text and all(len(p) <= SLICE_CHARS for p in parts)
    assert all(p.startswith(" ") for p in parts[1:])  # every cut just before a space
    assert slices("x" * 1000, 256) == ["x" * 256] * 3 + ["x" * 232]


def test_a_long_real_prompt_counts_the_same_in_slices(counter):
    text = max((e["text"] for e in GOLDEN), key=len)
    assert len(text) > 3 * SLICE_CHARS
    whole = len(counter.t5(text, add_special_tokens=False)["input_ids"])
    assert counter.count(text) == whole


def test_the_nfkc_expanding_prompt_is_counted_in_bounded_pieces(counter):
    """``"\\ufdfa" * 4000``: 18 characters each after NFKC; counted a slice at a time (each at most 18 x 256
    characters reach the tokenizer), at most two tokens a cut above the whole string's count."""
    seen: list[int] = []
    tokenize = counter.t5

    class Spy:
        def __call__(self, text, **kwargs):
            seen.append(len(text))
            return tokenize(text, **kwargs)

    counter.t5 = Spy()
    try:
        count = counter.count("\ufdfa" * 4000)
    finally:
        counter.t5 = tokenize
    assert max(seen) <= SLICE_CHARS and len(seen) == math.ceil(4000 / SLICE_CHARS)
    whole = len(tokenize("\ufdfa" * 4000, add_special_tokens=False)["input_ids"])
    assert whole == 24002 and 0 <= count - whole <= 2 * len(seen)  # a cut inside a "word": two tokens at most
    assert counter.count("\ufdfa" * 4000, stop_after=1536) < 3000  # stops once past the limit


def test_counting_is_thread_safe_enough_for_the_server(counter):
    """The API counts on its thread pool: concurrent counts give the same answers."""
    text = max((e["text"] for e in GOLDEN), key=len)
    expected = counter.count(text)
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(counter.count(text))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 4
