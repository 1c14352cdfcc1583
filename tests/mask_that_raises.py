"""A mask module that raises while it is imported (tests/mapping/test_masking.py)."""

1 / 0


def scrub(data):  # never reached
    return data
