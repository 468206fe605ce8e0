import pytest

from specdec.wer import edit_distance, normalize, number_words, word_error_rate


def test_normalize_case_punctuation_numbers():
    assert normalize("It's 3 o'clock, Mr. Smith!") == ["its", "three", "oclock", "mr", "smith"]
    assert normalize("He paid 1,205 dollars.") == "he paid one thousand two hundred five dollars".split()
    assert normalize("  -- ") == []


@pytest.mark.parametrize("n, words", [(0, "zero"), (17, "seventeen"), (40, "forty"), (99, "ninety nine"),
                                      (100, "one hundred"), (2026, "two thousand twenty six"),
                                      (3_000_015, "three million fifteen")])
def test_number_words(n, words):
    assert number_words(n) == words


def test_edit_distance_counts_each_kind():
    ref = "the cat sat on the mat".split()
    assert edit_distance(ref, ref) == 0
    assert edit_distance(ref, "the cat sat on a mat".split()) == 1  # substitution
    assert edit_distance(ref, "the cat on the mat".split()) == 1  # deletion
    assert edit_distance(ref, "the black cat sat on the mat".split()) == 1  # insertion
    assert edit_distance(ref, []) == 6
    assert edit_distance([], ["a", "b"]) == 2


def test_corpus_wer_sums_errors_over_words():
    w = word_error_rate(["The box was thrown beside the parked truck.", "Hello there"],
                        ["the box was through this and the truck", "hello there"])
    # thrown→through, beside→this, the→and, parked→the: 4 edits over 8 + 2 reference words
    assert (w.errors, w.words) == (4, 10)
    assert w.rate == pytest.approx(0.4)
    assert word_error_rate(["Twenty 5 cats"], ["twenty five cats."]).errors == 0
    with pytest.raises(ValueError):
        word_error_rate(["a"], [])
