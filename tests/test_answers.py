"""The final-answer rule on real-looking responses, and the reward hook."""
import pytest

from engine.analysis import answers

CASES = [  # (response, expected number, rule)
    ("Natalia sold 48 clips in April and 24 in May, so 48 + 24 = 72 clips.", 72, "last_number"),
    ("The total cost is $1,250.50 for everything.", 1250.5, "last_number"),
    ("He has 3 apples, eats 5... The answer is -2.", -2, "answer_marker"),
    ("So the answer is 18 dollars, not 20 as I said in step 2.", 18, "answer_marker"),
    ("Final answer: 1,000,000", 1_000_000, "answer_marker"),
    ("The answer is: $42.", 42, "answer_marker"),
    ("First 2 + 3 = 5. Then 5 * 4 = 20.\n#### 20", 20, "gsm_marker"),
    ("We get \\boxed{\\frac{3}{4}} after simplifying 6/8.", 0.75, "boxed"),
    ("Thus x = 7 and \\boxed{-12.5} is the result, 3 steps.", -12.5, "boxed"),
    ("\\boxed{1,024} bytes", 1024, "boxed"),
    ("The temperature dropped to −8 degrees overnight", -8, "last_number"),
    ("She ran 0.5 miles, then 2.25 miles.", 2.25, "last_number"),
    ("About 45% of the class passed", 45, "last_number"),
    ("It takes .75 hours", 0.75, "last_number"),
    ("The answer is 3/4 of the pie", 0.75, "answer_marker"),
    ("I cannot solve this problem without more information.", None, "none"),
    ("", None, "none"),
    ("The answer is twelve, since 4 + 8 = 12", 12, "last_number"),  # no number near the marker
    ("model2 version x3 says nothing", None, "none"),                # digits inside words are not numbers
]


@pytest.mark.parametrize("text,value,rule", CASES)
def test_extract_answer(text, value, rule):
    got = answers.extract_answer(text)
    assert got.rule == rule, got
    assert got.value == (pytest.approx(value) if value is not None else None), got


@pytest.mark.parametrize("response,reference,reward", [
    ("so the answer is 72", "72", 1.0),
    ("so the answer is 72.0", "Natalia sold 48/2 = 24 clips in May.\n#### 72", 1.0),  # GSM8K reference
    ("The answer is 1,234", 1234, 1.0),
    ("The answer is 71", "72", 0.0),
    ("no idea", "72", 0.0),
    ("The answer is -3", "-3", 1.0),
    ("The answer is 0.1", "0.1000000001", 1.0),  # within the 1e-6 relative tolerance
])
def test_number_reward(response, reference, reward):
    assert answers.number_reward(response, reference) == reward


def test_hook_from_a_file_and_its_errors(tmp_path):
    f = tmp_path / "grader.py"
    f.write_text("def exact(response, reference):\n    return response.strip() == str(reference)\n"
                 "def bad(response, reference):\n    return 'yes'\n")
    hook = answers.load_hook(f"{f}:exact")
    assert answers.reward_of(hook, " Paris ", "Paris", "sample 0/0") == 1.0
    with pytest.raises(ValueError, match="returned 'yes' for sample 3/1"):
        answers.reward_of(answers.load_hook(f"{f}:bad"), "x", "y", "sample 3/1")
    for spec, msg in ((f"{f}:nope", "has no function nope"), ("nothing", "expected 'module:function'"),
                      ("no_such_mod_xyz:f", "cannot import no_such_mod_xyz"),
                      (f"{tmp_path}/missing.py:f", "no such file")):
        with pytest.raises(ValueError, match=msg):
            answers.load_hook(spec)
    assert answers.load_hook("engine.analysis.answers:number_reward") is answers.number_reward


def test_answer_field_detection():
    recs = [{"original_answer": "3", "messages": []}, {"original_answer": "4", "messages": []}]
    assert answers.answer_field(recs, None) == "original_answer"
    assert answers.answer_field([{"answer": 1, "original_answer": 2}], None) == "answer"
    assert answers.answer_field([{"messages": []}], None) is None
    with pytest.raises(ValueError, match="1 of 2 records lack it"):
        answers.answer_field([{"gold": 1}, {"x": 2}], "gold")
