"""Parameter counts and converter round trips."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from v2v_jax import convert
from v2v_jax.model import V2VModel, count_parameters
from v2v_torch_ref import model as tmodel

# 3,409,760 in the layers before the output, summed by hand, plus 33 J in the output 1x1 convolution (32 weights
# and a bias per joint).
EXPECTED_COUNTS = {21: 3_410_453, 16: 3_410_288, 15: 3_410_255, 14: 3_410_222}


@pytest.mark.parametrize("joints", sorted(EXPECTED_COUNTS))
def test_parameter_counts_equal_the_layer_sum(joints):
    jax_model = nnx.eval_shape(lambda: V2VModel(1, joints, rngs=nnx.Rngs(0)))
    assert count_parameters(jax_model) == EXPECTED_COUNTS[joints]
    assert tmodel.count_parameters(tmodel.V2VModel(1, joints)) == EXPECTED_COUNTS[joints]


def _port_keys() -> set[str]:
    """The state_dict keys of the PyTorch port (dragonbook/V2V-PoseNet-pytorch, src/v2v_model.py), written out from
    its module names: `block.{0,1}` = conv, BN; `res_branch.{0,1,3,4}` = conv, BN, conv, BN; `skip_con.{0,1}` only
    where a Res block changes the channel count; the output layer is a bare Conv3d."""
    conv, bn = ("weight", "bias"), ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    layers = {"basic": (("block.0", conv), ("block.1", bn)), "up": (("block.0", conv), ("block.1", bn)),
              "res": tuple((f"res_branch.{i}", kind) for i, kind in ((0, conv), (1, bn), (3, conv), (4, bn)))}
    layers["res_conv_skip"] = layers["res"] + (("skip_con.0", conv), ("skip_con.1", bn))
    ed = "encoder_decoder."
    blocks = {"front_layers.0": "basic", "front_layers.2": "res_conv_skip", "front_layers.3": "res",
              "front_layers.4": "res", ed + "skip_res1": "res", ed + "encoder_res1": "res_conv_skip",
              ed + "skip_res2": "res", ed + "encoder_res2": "res_conv_skip", ed + "mid_res": "res",
              ed + "decoder_res2": "res", ed + "decoder_upsample2": "up", ed + "decoder_res1": "res",
              ed + "decoder_upsample1": "up", "back_layers.0": "res", "back_layers.1": "basic",
              "back_layers.2": "basic"}
    keys = {f"{block}.{layer}.{name}" for block, kind in blocks.items() for layer, names in layers[kind]
            for name in names}
    return keys | {"output_layer.weight", "output_layer.bias"}


def test_state_dict_keys_equal_port_layout():
    keys = set(tmodel.V2VModel().state_dict())
    assert keys == _port_keys() and len(keys) == 212  # 31 convolutions x 2 keys + 30 BatchNorms x 5 keys
    jax_keys = set(convert.torch_state_dict(V2VModel(1, 21, rngs=nnx.Rngs(0))))
    assert jax_keys == keys


def test_round_trip_torch_jax_torch_is_bit_exact():
    torch.manual_seed(3)
    src = tmodel.V2VModel(1, 4, width=8)
    src.train()(torch.rand(2, 1, 16, 16, 16))  # non-trivial running statistics and counters
    model = V2VModel(1, 4, width=8, rngs=nnx.Rngs(0))
    convert.load_torch_state_dict(model, src.state_dict())
    back = convert.torch_state_dict(model)
    for key, value in src.state_dict().items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key


def test_loaded_arrays_do_not_alias_torch_buffers():
    src = tmodel.V2VModel(1, 4, width=8)
    model = V2VModel(1, 4, width=8, rngs=nnx.Rngs(0))
    convert.load_torch_state_dict(model, src.state_dict())
    before = np.array(model.front_layers[0].block[1].var[...])
    src.train()(torch.rand(1, 1, 16, 16, 16))  # torch updates running_var in place
    np.testing.assert_array_equal(np.asarray(model.front_layers[0].block[1].var[...]), before)


def test_wrong_checkpoint_is_refused_with_its_problems():
    model = V2VModel(1, 4, width=8, rngs=nnx.Rngs(0))
    sd = tmodel.V2VModel(1, 5, width=8).state_dict()
    with pytest.raises(ValueError, match="output_layer.weight"):
        convert.load_torch_state_dict(model, sd, source="other.pth")
    sd = tmodel.V2VModel(1, 4, width=8).state_dict()
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unexpected keys"):
        convert.load_torch_state_dict(model, sd)
