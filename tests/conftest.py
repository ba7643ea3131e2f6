"""Shared pytest setup: GPU tests are skipped where there is no CUDA device; under pytest-xdist
(`-n 3 --dist loadgroup`, the README's test command) each file's tests run on one worker, so a
file's module fixtures are built once, and the tests that run jobs on the two test clusters (marker
`scheduler`) all run on one worker, one after another, since they share the clusters' nodes; the
scheduler tier's tests that need no daemon (dry runs, the profiles' scripts) go by file like the rest."""
import pytest


# tryfirst: pytest-xdist reads the group in its own collection hook, which otherwise runs before this one
# and would see no group (every test then goes to any worker, and two cluster tests run at once).
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        on_clusters = item.get_closest_marker("scheduler") is not None
        item.add_marker(pytest.mark.xdist_group("clusters" if on_clusters else str(item.path.relative_to(config.rootpath))))
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marker `gpu`)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # the marker, not any keyword (a directory named *gpu*)
            item.add_marker(skip)
