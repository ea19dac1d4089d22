"""Mesh construction, logical-axis sharding, and sharded forward passes equal to the single-device result."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

import jaxmath
from jaxmath.parallel import MeshConfig, batch_sharding, logical_to_spec, make_mesh
from tiny_hf import left_padded_batch, save_tiny, tiny_model


def test_mesh_shapes_and_errors():
    assert jax.device_count() == 8
    assert MeshConfig(data=-1, fsdp=2, tensor=2).shape(8) == (2, 2, 2)
    assert MeshConfig(data=1, fsdp=-1).shape(8) == (1, 8, 1)
    mesh = make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    with pytest.raises(ValueError, match="at most one"):
        MeshConfig(data=-1, fsdp=-1).shape(8)
    with pytest.raises(ValueError, match="8 devices"):
        MeshConfig(data=3, fsdp=1, tensor=1).shape(8)


def test_logical_rules_replicate_what_does_not_divide():
    mesh = make_mesh((1, 2, 4))
    assert logical_to_spec(("embed", "heads", "head_dim"), mesh, (64, 4, 16)) == PartitionSpec("fsdp", "tensor", None)
    # 2 kv heads cannot be split 4 ways: replicated rather than failing.
    assert logical_to_spec(("embed", "kv_heads", "head_dim"), mesh, (64, 2, 16)) == PartitionSpec("fsdp", None, None)
    assert logical_to_spec(("batch", "length"), mesh, (8, 16)) == PartitionSpec("fsdp", None)
    with pytest.raises(KeyError, match="nonsense"):
        logical_to_spec(("nonsense",))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return save_tiny(tiny_model("qwen2", num_key_value_heads=2), tmp_path_factory.mktemp("hf") / "hf")


@pytest.fixture(scope="module")
def reference(hf_dir):
    ids, mask = left_padded_batch(batch=8)
    model = jaxmath.from_pretrained(hf_dir)
    return ids, mask, np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (1, 4, 2), (1, 2, 4)])
def test_sharded_forward_equals_single_device(hf_dir, reference, shape):
    ids, mask, ref = reference
    mesh = make_mesh(shape)
    model = jaxmath.from_pretrained(hf_dir, mesh=mesh)
    q_proj = model.model.layers.self_attn.q_proj[...]
    assert q_proj.sharding.spec == logical_to_spec(("layers", "heads", "head_dim", "embed"), mesh, q_proj.shape)
    if shape[1] > 1:  # weights really are split: each device holds a fraction
        assert q_proj.addressable_shards[0].data.size < q_proj.size

    @nnx.jit
    def forward(m, i, a):
        return m(i, attention_mask=a)

    with jax.set_mesh(mesh):
        inputs = [jax.device_put(jnp.asarray(x), batch_sharding(mesh)) for x in (ids, mask)]
        out = forward(model, *inputs)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)
