"""Parameter counts (SPEC §2) and converter round trips."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from v2v_jax import convert
from v2v_jax.model import V2VModel, count_parameters
from v2v_torch_ref import model as tmodel

SPEC_COUNTS = {21: 3_410_453, 16: 3_410_288, 15: 3_410_255, 14: 3_410_222}


@pytest.mark.parametrize("joints", sorted(SPEC_COUNTS))
def test_parameter_counts_equal_spec(joints):
    jax_model = nnx.eval_shape(lambda: V2VModel(1, joints, rngs=nnx.Rngs(0)))
    assert count_parameters(jax_model) == SPEC_COUNTS[joints]
    assert tmodel.count_parameters(tmodel.V2VModel(1, joints)) == SPEC_COUNTS[joints]


def test_state_dict_keys_equal_port_layout():
    keys = set(tmodel.V2VModel().state_dict())
    assert len(keys) == 212
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
