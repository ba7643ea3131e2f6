"""Shared pytest setup: GPU tests are skipped where there is no CUDA device; under pytest-xdist
(`-n 3 --dist loadgroup --no-loadscope-reorder`, the README's test command) each file's tests run on one worker, so a
file's module fixtures are built once, and the tests that run jobs on a test cluster (marker `scheduler`)
run on one worker per cluster, one after another, since they share that cluster's nodes: the SLURM tests on
one, the Grid Engine tests on another, so the two tiers (mostly waiting on daemons) overlap. The scheduler
tier's tests that need no daemon (dry runs, the profiles' scripts) go by file like the rest. The cluster
tests are handed out first, then the `slow` ones."""
import pytest


def cluster_of(item) -> str:
    """The test cluster a `scheduler` test runs jobs on: its `scheduler` parameter, else the marker's
    argument (``@pytest.mark.scheduler("sge")``)."""
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "scheduler" in callspec.params:
        return callspec.params["scheduler"]
    marker = item.get_closest_marker("scheduler")
    if not marker.args:
        raise pytest.UsageError(f"{item.nodeid}: name its cluster, @pytest.mark.scheduler(\"slurm\") or (\"sge\")")
    return marker.args[0]


# tryfirst: pytest-xdist reads the group in its own collection hook, which otherwise runs before this one
# and would see no group (every test then goes to any worker, and two cluster tests run at once).
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        on_cluster = item.get_closest_marker("scheduler") is not None
        group = f"cluster-{cluster_of(item)}" if on_cluster else str(item.path.relative_to(config.rootpath))
        item.add_marker(pytest.mark.xdist_group(group))
    # Longest first: xdist hands a free worker the next group in this order (with --no-loadscope-reorder; its own
    # order puts the files of the most tests first), so the cluster tiers, each a chain on its own worker, start
    # at once, and no slow file comes last, where it would run alone.
    items.sort(key=lambda item: 0 if item.get_closest_marker("scheduler") else 1 if item.get_closest_marker("slow") else 2)
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
