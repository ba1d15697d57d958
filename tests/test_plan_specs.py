"""ModelSpec presets and config.json parsing, DeviceSpec and ClusterSpec."""

import json

import pytest

from shardcore.plan import DEVICE_PRESETS, MODEL_PRESETS, ClusterSpec, ModelSpec


def dense_params(h, layers, heads, kv, d, ffn, vocab, tied=False, qk_norm=False):
    attn = h * heads * d * 2 + h * kv * d * 2 + (2 * d if qk_norm else 0)
    per_layer = attn + 3 * h * ffn + 2 * h
    return layers * per_layer + vocab * h * (1 if tied else 2) + h


@pytest.mark.parametrize(
    "name, billions",
    [
        ("llama-3-70b", 70.55),
        ("qwen3-32b", 32.76),
        ("qwen3-8b", 8.19),
        ("llama-3-8b", 8.03),
    ],
)
def test_dense_presets_match_published_sizes(name, billions):
    m = MODEL_PRESETS[name]
    expect = dense_params(
        m.hidden_size,
        m.num_layers,
        m.num_heads,
        m.num_kv_heads,
        m.head_dim,
        m.ffn_size,
        m.vocab_size,
        m.tie_embeddings,
        m.qk_norm,
    )
    assert m.num_params == expect
    assert abs(m.num_params / 1e9 - billions) < 0.01


def test_qwen3_235b_preset():
    m = MODEL_PRESETS["qwen3-235b-a22b"]
    assert (m.hidden_size, m.num_layers, m.num_heads, m.num_kv_heads, m.head_dim) == (
        4096,
        94,
        64,
        4,
        128,
    )
    assert m.head_dim * m.num_heads != m.hidden_size  # head_dim is not hidden/heads
    assert (m.num_experts, m.experts_per_token, m.expert_ffn_size) == (128, 8, 1536)
    h = 4096
    per_layer = h * 64 * 128 * 2 + h * 4 * 128 * 2 + 2 * 128 + 2 * h + 128 * h + 128 * 3 * h * 1536
    total = 94 * per_layer + 2 * 151936 * h + h
    assert m.num_params == total
    assert 235.0e9 < total < 235.2e9
    active = total - 94 * 120 * 3 * h * 1536
    assert m.num_active_params == active and 22.1e9 < active < 22.3e9
    assert m.moe_layers == tuple(range(94))


def test_mixtral_preset():
    m = MODEL_PRESETS["mixtral-8x7b"]
    assert abs(m.num_params / 1e9 - 46.70) < 0.01
    assert abs(m.num_active_params / 1e9 - 12.88) < 0.01


QWEN3_MOE_CFG = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "model_type": "qwen3_moe",
    "hidden_size": 64,
    "num_hidden_layers": 6,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 24,
    "intermediate_size": 96,
    "moe_intermediate_size": 32,
    "num_experts": 6,
    "num_experts_per_tok": 2,
    "decoder_sparse_step": 2,
    "mlp_only_layers": [3],
    "vocab_size": 101,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
}


def test_from_hf_config_qwen3_moe_layers(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(QWEN3_MOE_CFG))
    for src in (QWEN3_MOE_CFG, str(path), str(tmp_path)):
        m = ModelSpec.from_hf_config(src)
        # (i + 1) % 2 == 0 -> layers 1, 3, 5; layer 3 is in mlp_only_layers
        assert m.moe_layers == (1, 5)
        assert m.head_dim == 24 and m.ffn_size == 96 and m.expert_ffn_size == 32
        assert m.qk_norm and m.dtype == "float32" and m.num_kv_heads == 2


def test_from_hf_config_llama_and_mixtral():
    llama = ModelSpec.from_hf_config(
        {
            "model_type": "llama",
            "hidden_size": 8192,
            "num_hidden_layers": 80,
            "num_attention_heads": 64,
            "num_key_value_heads": 8,
            "intermediate_size": 28672,
            "vocab_size": 128256,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
        }
    )
    assert llama.num_params == MODEL_PRESETS["llama-3-70b"].num_params
    assert llama.head_dim == 128 and not llama.qk_norm
    mixtral = ModelSpec.from_hf_config(
        {
            "model_type": "mixtral",
            "hidden_size": 4096,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "intermediate_size": 14336,
            "num_local_experts": 8,
            "num_experts_per_tok": 2,
            "vocab_size": 32000,
        }
    )
    assert mixtral.num_params == MODEL_PRESETS["mixtral-8x7b"].num_params
    assert mixtral.ffn_size == 0 and mixtral.expert_ffn_size == 14336


def test_from_hf_config_rejects_bad_input():
    with pytest.raises(ValueError, match="hidden_size"):
        ModelSpec.from_hf_config({"num_hidden_layers": 2})
    with pytest.raises(ValueError, match="attention_bias"):
        ModelSpec.from_hf_config(dict(QWEN3_MOE_CFG, attention_bias=True))
    with pytest.raises(ValueError, match="num_kv_heads"):
        ModelSpec(
            name="x",
            hidden_size=8,
            num_layers=1,
            num_heads=6,
            num_kv_heads=4,
            head_dim=2,
            ffn_size=4,
            vocab_size=10,
        )
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelSpec.preset("gpt-5")


def test_devices_and_clusters():
    h100 = DEVICE_PRESETS["h100-80gb"]
    assert h100.nominal_memory_bytes == 80 * 10**9
    assert abs(h100.memory_bytes / 2**30 - 79.6) < 0.1  # 81559 MiB as nvidia-smi reports
    rngd = DEVICE_PRESETS["rngd"]
    c = ClusterSpec.make("rngd", 4)
    assert c.world_size == 32 and c.unit.memory_bytes == rngd.memory_bytes // 8
    assert c.link(0, 7)[2] == "card" and c.link(7, 8)[2] == "node"
    c2 = ClusterSpec.make("h100-80gb", 16, 8)
    assert c2.nodes == 2 and c2.link(7, 8)[2] == "network" and c2.link(0, 7)[2] == "node"
    with pytest.raises(ValueError, match="devices-per-node"):
        ClusterSpec.make("h100-80gb", 12, 8)
