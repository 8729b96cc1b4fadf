"""Block layouts probed from what the blocks compute (sls_fast.models.families.probe), never
guessed: each layout read from the output shape and the block's own parameters, a second
reading for ambiguous maps, and a refusal naming the block when they disagree."""
import pytest
import timm
import torch
import torch.nn as nn

import sls_fast
from sls_fast.models.families import family_of
from sls_fast.models.families.probe import probe_blocks

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name, options, size, layout", [
    ("vit_tiny_patch16_224", dict(img_size=32, depth=2), 32, "tokens"),
    ("mambaout_femto", dict(dims=(16, 24, 32, 40), depths=(1, 1, 1, 1)), 64, "nhwc"),
    ("resnet18", {}, 64, "nchw"),
])
def test_layouts_from_shapes_and_weights(name, options, size, layout):
    m = timm.create_model(name, pretrained=False, **options).eval()
    probes = family_of(m).probe(m, torch.zeros(1, 3, size, size))
    assert {p.layout for p in probes} == {layout}
    if layout == "nhwc":  # MambaOut: the width is the channel count, not the map's width
        assert [p.width for p in probes] == [16, 24, 32, 40]


def test_focalnet_is_channels_first_and_not_taken_for_swin():
    from timm.models.focalnet import FocalNet

    m = FocalNet(embed_dim=16, depths=(1, 1, 1, 1)).eval()
    fam = family_of(m)
    assert fam.name == "generic"
    probes = fam.probe(m, torch.zeros(1, 3, 64, 64))
    assert {p.layout for p in probes} == {"nchw"} and probes[0].width == 16


def test_cait_patch_blocks_carry_no_class_token():
    m = timm.create_model("cait_xxs24_224", pretrained=False, img_size=32, depth=2,
                          embed_dim=32, num_heads=2).eval()
    probes = family_of(m).probe(m, torch.zeros(1, 3, 32, 32))
    assert [p.prefix for p in probes] == [0, 0] and probes[0].tokens == 4


class _Net(nn.Module):
    def __init__(self, block, size=8):
        super().__init__()
        self.size = size
        self.stem = nn.Conv2d(3, 6, 1)
        self.blocks = nn.Sequential(block)

    def forward(self, x):
        if x.shape[-1] != self.size:
            raise ValueError("fixed size")  # a fixed-size model: no second reading
        return self.blocks(self.stem(x))


class _Swap(nn.Module):
    """Channels to the last axis, with a linear layer declaring ``width``."""

    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(6, width)

    def forward(self, x):
        return self.fc(x.permute(0, 2, 3, 1))


class _Twice(nn.Module):
    """A 1x1 convolution declaring 6 channels, then its output twice: 12 channels."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(6, 6, 1)

    def forward(self, x):
        y = self.conv(x)
        return torch.cat([y, y], dim=1)


def test_a_map_that_contradicts_its_weights_is_refused_naming_the_block():
    m = _Net(_Twice()).eval()  # [1, 12, 8, 8] where the weights declare 6 channels
    with pytest.raises(ValueError, match=r"block blocks\.0 returns \[1, 12, 8, 8\] and "
                                         r"neither its parameters \(declared width 6\)"):
        probe_blocks(m, [m.blocks[0]], ["blocks.0"], torch.zeros(1, 3, 8, 8))
    m = _Net(_Swap(8)).eval()  # [1, 8, 8, 8]: channels and both spatial axes are 8 wide
    with pytest.raises(ValueError, match="blocks.0 returns .* tell its channel axis"):
        probe_blocks(m, [m.blocks[0]], ["blocks.0"], torch.zeros(1, 3, 8, 8))
    m.size = None  # a model that runs at any size: the second reading tells the axis
    m.forward = lambda x: m.blocks(m.stem(x))  # type: ignore[method-assign]
    (p,) = probe_blocks(m, [m.blocks[0]], ["blocks.0"], torch.zeros(1, 3, 8, 8))
    assert p.layout == "nhwc" and p.width == 8


def test_a_sequential_block_is_wrapped_not_extended():
    """DaViT's blocks are nn.Sequential: the adapter must not run as one more step."""
    m = timm.create_model("davit_tiny", pretrained=False, embed_dims=(16, 32, 48, 64),
                          num_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1)).eval()
    x = torch.randn(2, 3, 64, 64)
    ref = m(x)
    sls_fast.add_adapters(m, "convpass", dim=4)
    blk = m.stages[0].blocks[0]
    assert isinstance(blk, nn.Sequential) and hasattr(blk, "adapter")
    torch.testing.assert_close(m.eval()(x), ref)
