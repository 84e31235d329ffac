import pytest


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    """Nothing a test does (a default ``runs/`` dir, say) may land in the repository."""
    monkeypatch.chdir(tmp_path)
