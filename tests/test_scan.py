"""Scans of safetensors shards checked against the plain numpy reference."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from reference import TORCH_DTYPES, as_float64, dead_count, fire_counts, random_activations, write_shard

from neuron_activity import BadInput, NactError, NoVectors, ShapeMismatch, Threshold, count_array, scan

ALL_FLOATS = list(TORCH_DTYPES)
DEFAULT = [Threshold.parse(t) for t in ("0", "1e-5", "1e-6")]


def dead_by_threshold(activity, name: str) -> dict[str, int]:
    c = activity.components[name]
    return {t.text: int(c.dead(t).sum()) for t in DEFAULT}


def test_reference_metric_documented_example() -> None:
    # NeuronActivityMetric(num_learned_features=3).forward([[1, 0, 1], [0, 0, 0]]) == tensor(1)
    activity = count_array(torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))
    (row,) = activity.rows([Threshold.parse("0")])
    assert (row.dead, row.alive, row.num_features, row.num_vectors) == (1, 2, 3, 2)


def test_reference_example_as_a_shard(tmp_path: Path) -> None:
    write_shard(tmp_path / "a.safetensors", {"acts": torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])})
    result = scan([tmp_path])
    assert [r.dead for r in result.activity.rows([Threshold.parse("0")])] == [1]


def test_two_components_by_component_axis(tmp_path: Path) -> None:
    x = torch.zeros(4, 2, 3)
    x[0, 0, 0] = 1  # component 0: neurons 1, 2 dead
    x[:, 1, :] = 1  # component 1: none dead
    write_shard(tmp_path / "a.safetensors", {"acts": x})
    rows = scan([tmp_path]).activity.rows([Threshold.parse("0")])
    assert [(r.component, r.dead, r.num_vectors) for r in rows] == [("acts[0]", 2, 4), ("acts[1]", 0, 4)]


def test_flatten_makes_every_leading_axis_a_batch_axis(tmp_path: Path) -> None:
    x = torch.zeros(4, 5, 3)  # [batch, position, feature]
    x[3, 4, 1] = 2.0
    write_shard(tmp_path / "a.safetensors", {"cache": x})
    rows = scan([tmp_path], flatten=True).activity.rows([Threshold.parse("0")])
    assert [(r.component, r.dead, r.num_features, r.num_vectors) for r in rows] == [("cache", 2, 3, 20)]


def test_two_keys_and_shards_add_up(tmp_path: Path) -> None:
    write_shard(tmp_path / "0.safetensors", {"b": torch.ones(3, 2), "a": torch.zeros(3, 4)})
    write_shard(tmp_path / "1.safetensors", {"a": torch.ones(2, 4)})
    activity = scan([tmp_path]).activity
    assert list(activity.components) == ["a", "b"]  # first seen, in the header's (sorted) order
    assert activity.components["a"].fire_counts.tolist() == [2, 2, 2, 2]
    assert activity.components["a"].num_vectors == 5
    assert activity.components["b"].num_vectors == 3


def test_inclusive_boundary_above_zero(tmp_path: Path) -> None:
    # 1e-5 x 200_000 = 2 exactly: a neuron that fired twice is dead, three times is alive.
    x = torch.zeros(200_000, 3, dtype=torch.float16)
    x[:2, 0] = 1.0
    x[:3, 1] = 1.0
    x[:, 2] = 1.0
    write_shard(tmp_path / "a.safetensors", {"acts": x})
    c = scan([tmp_path]).activity.components["acts"]
    assert c.dead(Threshold.parse("1e-5")).tolist() == [True, False, False]
    assert c.dead(Threshold.parse("0.00001")).tolist() == [True, False, False]
    assert c.dead(Threshold.parse("0")).tolist() == [False, False, False]


def test_decimal_threshold_is_exact_where_floats_are_not() -> None:
    # 1e-6 * 20_000_000 is exactly 20; in floats 0.1 * 30 is 3.0000000000000004.
    assert Threshold.parse("1e-6").max_dead_fires(20_000_000) == 20
    assert Threshold.parse("0.1").max_dead_fires(30) == 3


def test_negatives_zero_and_nan_do_not_fire_inf_does(tmp_path: Path) -> None:
    x = torch.tensor([[-1.0, 0.0, float("nan"), float("inf"), -0.0, -float("inf")]] * 3)
    write_shard(tmp_path / "a.safetensors", {"acts": x})
    result = scan([tmp_path])
    c = result.activity.components["acts"]
    assert c.fire_counts.tolist() == [0, 0, 0, 3, 0, 0]
    assert c.nan_counts.tolist() == [0, 0, 3, 0, 0, 0]
    assert "component 'acts': 3 NaN value(s) in 1 neuron(s) (2), counted as not firing" in result.warnings


def raw_safetensors(path: Path, key: str, dtype: str, shape: list[int], data: bytes) -> None:
    header = json.dumps({key: {"dtype": dtype, "shape": shape, "data_offsets": [0, len(data)]}}).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)


def test_counts_exact_beyond_float32_range(tmp_path: Path) -> None:
    # float32 counts stop at 2**24: 2**24 + 1 == 2**24 in float32. nact counts in int64.
    n = 2**24 + 3
    one_e4m3 = 0x38  # 1.0 in float8_e4m3fn
    data = np.full((n, 2), 0, np.uint8)
    data[:, 0] = one_e4m3
    data[: 2**24 + 1, 1] = one_e4m3
    raw_safetensors(tmp_path / "big.safetensors", "acts", "F8_E4M3", [n, 2], data.tobytes())
    c = scan([tmp_path]).activity.components["acts"]
    assert c.fire_counts.tolist() == [2**24 + 3, 2**24 + 1]
    assert c.num_vectors == 2**24 + 3
    assert np.float32(2**24 + 1) == np.float32(2**24)  # why float32 counts are wrong here
    # dead at p when count <= p * N: p = (2**24 + 1) / N exactly makes neuron 1 dead, neuron 0 alive
    p = Threshold("exact", Fraction(2**24 + 1, n))
    assert c.dead(p).tolist() == [False, True]


@pytest.mark.parametrize("kernel", ["native", "numpy", "torch"])
@pytest.mark.parametrize("dtype", ALL_FLOATS)
def test_every_chunk_size_and_dtype_agree_with_reference(tmp_path: Path, dtype: str, kernel: str) -> None:
    rng = np.random.default_rng(len(dtype))
    shards = [random_activations(rng, (rows, 2, 5), dtype) for rows in (37, 1, 0, 300)]
    for i, x in enumerate(shards):
        write_shard(tmp_path / f"{i}.safetensors", {"acts": x})
    values = np.concatenate([as_float64(x) for x in shards])
    for fire_above in ("0", "1e-5"):
        expected = [fire_counts(values[:, c, :], Fraction(fire_above)).tolist() for c in range(2)]
        for chunk_rows in (1, 2, 3, 7, 64, 255, 256, 299, 1000, None):
            for threads in (1, 2, 3):
                activity = scan(
                    [tmp_path], fire_above=fire_above, chunk_rows=chunk_rows, threads=threads, kernel=kernel
                ).activity
                got = [activity.components[f"acts[{c}]"].fire_counts.tolist() for c in range(2)]
                assert got == expected, (fire_above, chunk_rows, threads)
                assert activity.components["acts[0]"].num_vectors == 338


@pytest.mark.parametrize("kernel", ["native", "numpy"])
@pytest.mark.parametrize("width", [1, 3, 1023, 1024, 1025, 2047, 2049, 5000])
@pytest.mark.parametrize("rows", [0, 1, 254, 255, 256, 2000])
def test_block_and_fold_boundaries(width: int, rows: int, kernel: str) -> None:
    rng = np.random.default_rng(width * 7 + rows)
    x = rng.standard_normal((rows, width)).astype(np.float32)
    x[x < 0.3] = 0
    if rows:
        c = count_array(x, kernel=kernel).components["activations"]
        assert c.fire_counts.tolist() == fire_counts(x.astype(np.float64)).tolist()


def test_mixed_dtypes_for_one_key_across_shards(tmp_path: Path) -> None:
    write_shard(tmp_path / "0.safetensors", {"acts": torch.tensor([[1.0, 0.0]], dtype=torch.bfloat16)})
    write_shard(tmp_path / "1.safetensors", {"acts": torch.tensor([[1.0, 2.0]], dtype=torch.float32)})
    assert scan([tmp_path]).activity.components["acts"].fire_counts.tolist() == [2, 1]


def test_sample_data_known_answers() -> None:
    activity = scan([Path(__file__).parent.parent / "sample_data"]).activity
    assert dead_by_threshold(activity, "blocks.0.hook_sae_acts") == {"0": 2, "1e-5": 3, "1e-6": 2}
    assert dead_by_threshold(activity, "blocks.1.hook_sae_acts") == {"0": 1, "1e-5": 2, "1e-6": 1}


def test_dead_count_matches_reference_on_sample_data() -> None:
    from safetensors.torch import load_file

    folder = Path(__file__).parent.parent / "sample_data"
    shards = [load_file(str(p)) for p in sorted(folder.glob("*.safetensors"))]
    activity = scan([folder]).activity
    for key in ("blocks.0.hook_sae_acts", "blocks.1.hook_sae_acts"):
        values = np.concatenate([as_float64(s[key]) for s in shards])
        counts = fire_counts(values)
        assert activity.components[key].fire_counts.tolist() == counts.tolist()
        for t in DEFAULT:
            assert int(activity.components[key].dead(t).sum()) == dead_count(counts, len(values), t.text)


# --- problems with the input ---------------------------------------------------------------


def test_feature_count_mismatch_names_both_shards(tmp_path: Path) -> None:
    write_shard(tmp_path / "0.safetensors", {"acts": torch.zeros(2, 8)})
    write_shard(tmp_path / "1.safetensors", {"acts": torch.zeros(3, 16)})
    with pytest.raises(ShapeMismatch) as e:
        scan([tmp_path])
    message = str(e.value)
    assert "0.safetensors" in message and "1.safetensors" in message
    assert "'acts'" in message and "[2, 8]" in message and "[3, 16]" in message


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "too short for a header"),
        (b"\x0f\x00\x00\x00\x00\x00\x00\x00{not json}     ", "corrupt safetensors header"),
        ((2**40).to_bytes(8, "little") + b"{}", "header length 1099511627776 does not fit"),
        (b"\x02\x00\x00\x00\x00\x00\x00\x00[]", "not a JSON object"),
    ],
)
def test_corrupt_files(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(BadInput) as e:
        scan([path])
    assert str(path) in str(e.value) and problem in str(e.value)


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    write_shard(path, {"acts": torch.ones(100, 4)})
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(BadInput, match=r"truncated: tensor 'acts' ends at byte \d+ but the file has \d+ bytes"):
        scan([path])


def test_integer_tensors_need_key(tmp_path: Path) -> None:
    write_shard(tmp_path / "a.safetensors", {"tokens": torch.ones(3, 4, dtype=torch.int64)})
    with pytest.raises(NoVectors, match="integer and bool tensors are counted only when --key names them"):
        scan([tmp_path])
    assert scan([tmp_path], keys=["tokens"]).activity.components["tokens"].fire_counts.tolist() == [3] * 4


def test_integer_tensor_beside_floats_is_skipped_with_a_warning(tmp_path: Path) -> None:
    write_shard(tmp_path / "a.safetensors", {"tokens": torch.ones(3, 4, dtype=torch.int32), "acts": torch.ones(3, 2)})
    result = scan([tmp_path])
    assert list(result.activity.components) == ["acts"]
    assert result.warnings == [
        "skipped tensor 'tokens' (I32) in 1 shard(s): integer and bool tensors are counted only when --key names them"
    ]


def test_key_not_found(tmp_path: Path) -> None:
    write_shard(tmp_path / "a.safetensors", {"acts": torch.ones(3, 2)})
    with pytest.raises(NactError, match=r"^key 'nope' not found in any shard \(keys seen: acts\)$"):
        scan([tmp_path], keys=["nope"])


def test_one_dimensional_tensor_named_is_an_error(tmp_path: Path) -> None:
    write_shard(tmp_path / "a.safetensors", {"bias": torch.ones(3), "acts": torch.ones(2, 3)})
    assert list(scan([tmp_path]).activity.components) == ["acts"]
    with pytest.raises(BadInput, match=r"tensor 'bias': shape \[3\] has no batch axis"):
        scan([tmp_path], keys=["bias"])


def test_no_vectors_is_an_error(tmp_path: Path) -> None:
    write_shard(tmp_path / "a.safetensors", {"acts": torch.ones(0, 3)})
    with pytest.raises(NoVectors, match=r"no vectors were counted \(components: 'acts'\): every tensor read is empty"):
        scan([tmp_path])


def test_missing_path_and_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no such file or directory"):
        scan([tmp_path / "missing"])
    with pytest.raises(BadInput, match="no shards found"):
        scan([tmp_path])


def test_error_in_a_later_shard_stops_all_threads(tmp_path: Path) -> None:
    import threading

    for i in range(6):
        write_shard(tmp_path / f"{i}.safetensors", {"acts": torch.ones(1000, 64)})
    before = threading.active_count()

    def truncate_once(path: Path, nbytes: int) -> None:  # shard 5 shrinks while 0 is counted
        victim = tmp_path / "5.safetensors"
        if victim.stat().st_size > 100:
            victim.write_bytes(victim.read_bytes()[:100])

    with pytest.raises(BadInput, match="5.safetensors: changed during the scan"):
        scan([tmp_path], chunk_rows=100, threads=2, on_progress=truncate_once)
    assert threading.active_count() == before


def test_unreadable_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    path = tmp_path / "a.safetensors"
    write_shard(path, {"acts": torch.ones(2, 2)})
    real_open = builtins.open

    def denied(file, *args, **kwargs):  # as for a file without read permission (tests may run as root)
        if Path(file) == path:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", denied)
    with pytest.raises(BadInput, match=f"{path}: cannot read: Permission denied"):
        scan([path])


def test_merging_counts_of_different_fire_rules_is_the_librarys_own_error() -> None:
    from neuron_activity import CountsMismatch, NeuronActivity

    zero, above = NeuronActivity(0), NeuronActivity(Fraction(1, 10))
    zero.add("a", np.array([1, 0]), 2)
    above.add("a", np.array([0, 0]), 2)
    with pytest.raises(CountsMismatch) as caught:
        zero.merge(above)
    assert str(caught.value) == (
        "counts made with fire above 0.1 cannot be merged into counts made with fire above 0: they count different events"
    )
    assert zero.components["a"].fire_counts.tolist() == [1, 0]  # left as it was


def test_a_plan_is_never_changed_and_a_part_of_it_carries_only_its_units(tmp_path: Path) -> None:
    from types import MappingProxyType

    from neuron_activity import CountOptions
    from neuron_activity.scan import plan_for
    from neuron_activity.sources import discover

    for name in ("a", "b"):
        write_shard(tmp_path / f"{name}.safetensors", {"acts": torch.ones(3, 4)})
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    plan = plan_for(discover([tmp_path]), CountOptions())
    part = plan.restricted([first])
    assert (plan.shards, part.shards) == ((first, second), (first,))
    assert [s.path for s in part.slabs] == [first] and part.units() == [first]
    assert (plan.groups["acts"].files, part.groups["acts"].files) == ((first, second), (first,))
    assert part.groups["acts"].num_features == 4  # every component keeps its place and shape
    assert isinstance(plan.groups, MappingProxyType) and isinstance(part.saes, MappingProxyType)
    with pytest.raises(TypeError):
        plan.groups["acts"] = part.groups["acts"]  # a plan's groups are read-only
    assert {plan, part, plan} == {plan, part} and plan != part  # a plan is itself, hashed by identity
