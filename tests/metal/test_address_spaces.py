"""Every Metal kernel passes a check in which Metal's address spaces are distinct,
and a pointer passed across them fails it, as it would under Apple's compiler."""

import pytest
from address_space_check import KERNEL, address_space_errors


def test_the_kernels_pass() -> None:
    assert address_space_errors(KERNEL.read_text()) == []


def mutated(old: str, new: str) -> str:
    source = KERNEL.read_text()
    assert source.count(old) >= 1, old
    return source.replace(old, new, 1)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        # A helper that takes device memory where the kernels pass threadgroup memory.
        (
            "    float acc,\n    threadgroup float* local_sums,",
            "    float acc,\n    device float* local_sums,",
            "no matching function",
        ),
        # Device memory read through a thread pointer (in a template: the
        # instantiations are checked too).
        (
            "const device T* h = HAS_RESIDUAL ? h_out : x;",
            "const thread T* h = HAS_RESIDUAL ? h_out : x;",
            "address_space",
        ),
    ],
    ids=("device-for-threadgroup", "thread-for-device"),
)
def test_a_pointer_across_address_spaces_fails(old: str, new: str, message: str) -> None:
    errors = address_space_errors(mutated(old, new))
    assert errors and any(message in e for e in errors), errors
