"""RoIAlign in parallel chunks at inference (regionclip/modeling/roi_heads/region_pooling.py)."""
import pytest
import torch
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes

from regionclip.modeling.roi_heads.region_pooling import pool_regions


def _boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 90
    return Boxes(torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 60 + 4], 1))


def _case():
    pooler = ROIPooler((7, 7), (1 / 8,), 0, "ROIAlignV2")
    features = [torch.randn(3, 16, 20, 20, generator=torch.Generator().manual_seed(0))]
    boxes = [_boxes(37, 1), _boxes(0, 2), _boxes(41, 3)]  # an image without regions
    return pooler, features, boxes


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_parallel_pooling_equals_the_pooler(threads):
    pooler, features, boxes = _case()
    with torch.no_grad():
        wanted = pooler(features, boxes)
        got = pool_regions(pooler, features, boxes, threads=threads, task_bytes=0)
    assert got.shape == (78, 16, 7, 7) and got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, wanted)  # same kernel, same inputs: identical values
    # the regions stay in image order: a permutation would be seen
    assert not torch.equal(got, torch.cat([wanted[37:], wanted[:37]]))


def test_parallel_pooling_under_autocast_keeps_float32_boxes():
    pooler, features, boxes = _case()
    bf16 = [features[0].bfloat16()]
    with torch.no_grad():
        wanted = pooler([bf16[0].float()], boxes).bfloat16()  # float32 kernel and boxes
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = pool_regions(pooler, bf16, boxes, threads=2, task_bytes=0)
            # detectron2's ROIAlign casts the boxes to the features' dtype: bfloat16 boxes
            rounded = pooler(bf16, boxes)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, wanted)
    assert not torch.equal(got, rounded)


def test_pooling_with_gradients_is_the_pooler():
    pooler, features, boxes = _case()
    features = [features[0].requires_grad_()]
    got = pool_regions(pooler, features, boxes, threads=2)
    assert got.requires_grad and got.is_contiguous()  # the pooler's own result
    got.sum().backward()
    assert features[0].grad.abs().sum() > 0


def test_no_regions():
    pooler, features, _ = _case()
    with torch.no_grad():
        got = pool_regions(pooler, features, [_boxes(0, 0)] * 3, threads=2)
    assert got.shape == (0, 16, 7, 7)


def test_a_trace_does_not_fix_the_number_of_regions():
    pooler, features, boxes = _case()

    def pool(feature, rois):
        return pool_regions(pooler, [feature], [Boxes(rois)], threads=2, task_bytes=0)

    with torch.no_grad():
        traced = torch.jit.trace(pool, (features[0][:1], boxes[0].tensor[:20]))
        got = traced(features[0][:1], boxes[2].tensor)  # 41 regions, traced with 20
        wanted = pooler([features[0][:1]], [boxes[2]])
    assert torch.equal(got, wanted)
