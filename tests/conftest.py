import pytest


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    """Nothing a test does (a default ``runs/`` dir, say) may land in the repository."""
    monkeypatch.chdir(tmp_path)


# The slowest tests (about a minute or two each) run first. Under pytest-xdist (scripts/test.sh runs two workers)
# a worker that idles steals queued tests from the other; a two-minute learning test started last would leave one
# worker waiting alone at the end.
SLOW_FIRST = ("tests/test_learning.py", "tests/test_docs.py", "tests/test_sweep.py")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: not item.nodeid.startswith(SLOW_FIRST))  # stable: the order within each group stays
