"""Checked exercises: each chapter's ``check_*`` functions live in ``chNN_topic.py`` here.

A check prints either what is right or, specifically, what is wrong with a hint, and returns
True or False, so a learner can try again without reading a stack trace.
"""


def verdict(problems, hint=None, success="Correct!"):
    """Print the first problem (and a hint), or ``success`` when ``problems`` is empty."""
    problems = [p for p in problems if p]
    if not problems:
        print(success)
        return True
    print(f"Not yet: {problems[0]}")
    if hint:
        print(f"Hint: {hint}")
    return False
