"""The wgmma W4A16 kernel's schedule (kernels/warpgroup_mm.py) and what it takes, without a GPU."""

from __future__ import annotations

import pytest
import torch

from qtool_kernels import warpgroup_mm
from qtool_kernels.layout import pack_weight


def test_plan_fills_the_sms():
    plan = warpgroup_mm.plan(64, 4096, 4096, 132)
    assert (plan.tile, plan.warpgroups, plan.split) == (64, 2, 4)  # 32 row tiles x 4 splits = 128 CTAs
    assert warpgroup_mm.plan(17, 28672, 8192, 132) == warpgroup_mm.Plan(32, 2, 1)  # 224 row tiles: no split
    assert warpgroup_mm.plan(128, 1024, 256, 132).split == 1  # 4 chunks: no split below 8 chunks each
    assert warpgroup_mm.plan(9, 4096, 14336, 132) == warpgroup_mm.Plan(16, 2, 4)


def test_parse_plan_names_the_bad_value():
    assert warpgroup_mm.parse_plan("64,1,8") == warpgroup_mm.Plan(64, 1, 8)
    assert warpgroup_mm.parse_plan(" ") is None
    for bad in ("48,2,1", "64,3,1", "64,2,9", "64,2", "128,4,1"):
        with pytest.raises(ValueError, match="QTOOL_WGMMA_PLAN"):
            warpgroup_mm.parse_plan(bad)


@pytest.mark.parametrize("bits,group,m,dtype,ok", [(4, 128, 64, torch.bfloat16, True), (4, -1, 1, torch.bfloat16, True),
                                                   (4, 32, 64, torch.bfloat16, False), (8, 128, 64, torch.bfloat16, False),
                                                   (4, 128, 129, torch.bfloat16, False), (4, 128, 64, torch.float16, False)])
def test_takes(bits, group, m, dtype, ok):
    codes = torch.randint(-8, 8, (64, 256), dtype=torch.int8)
    p = pack_weight(codes, torch.rand(64, 1 if group < 0 else 256 // group), None, None, bits, group)
    assert warpgroup_mm.takes(p, m, dtype) is ok
