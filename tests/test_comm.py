"""all_gather_with_grad in one process and in two processes started by launch(); launch() leaves
the process group before its workers exit."""
import os
import pickle

import pytest
import torch
from detectron2.utils import comm
from multiproc import launch_two, rendezvous_url

from detectron2_ext.utils import all_gather_with_grad


def test_single_process_is_identity():
    x = torch.randn(3, 4, requires_grad=True)
    assert all_gather_with_grad(x) is x


def _rows(rank):
    # rank 0 has 3 rows, rank 1 has 2 rows: unequal sizes on purpose
    g = torch.Generator().manual_seed(rank)
    return torch.randn(3 - rank, 4, generator=g)


def _weights():
    return torch.arange(5 * 4, dtype=torch.float32).reshape(5, 4) / 7.0


def _worker(out_dir):
    rank = comm.get_rank()
    results = {}
    for truncate in (False, True):
        x = _rows(rank).requires_grad_(True)
        gathered = all_gather_with_grad(x, truncate_to_min=truncate)
        w = _weights()[: gathered.shape[0]]
        (gathered * w).sum().backward()
        results[truncate] = (gathered.detach(), x.grad.clone())
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(results, f)


@pytest.mark.dist
def test_two_processes_gather_values_and_gradients(tmp_path):
    launch_two(_worker, str(tmp_path), args=(str(tmp_path),))
    res = [pickle.load(open(tmp_path / f"rank{r}.pkl", "rb")) for r in range(2)]
    full = torch.cat([_rows(0), _rows(1)])
    trunc = torch.cat([_rows(0)[:2], _rows(1)[:2]])
    w = _weights()
    for r in range(2):
        torch.testing.assert_close(res[r][False][0], full)
        torch.testing.assert_close(res[r][True][0], trunc)
    # Each rank's rows get the gradient of both ranks' (identical) losses: 2 * weight slice.
    torch.testing.assert_close(res[0][False][1], 2 * w[:3])
    torch.testing.assert_close(res[1][False][1], 2 * w[3:5])
    # truncated: rank 0's third row is dropped and receives no gradient
    torch.testing.assert_close(res[0][True][1], torch.cat([2 * w[:2], torch.zeros(1, 4)]))
    torch.testing.assert_close(res[1][True][1], 2 * w[2:4])


def test_launch_workers_leave_the_process_group(tmp_path):
    """The wrapper every worker of our launch() runs: result returned, then the group destroyed."""
    import torch.distributed as dist

    from detectron2_ext.engine.launch import _LeaveProcessGroup

    dist.init_process_group("gloo", init_method=rendezvous_url(str(tmp_path)), world_size=1,
                            rank=0)
    try:
        seen = []
        result = _LeaveProcessGroup(lambda a, b: seen.append(dist.is_initialized()) or a + b)(2, 3)
        assert result == 5 and seen == [True]
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
