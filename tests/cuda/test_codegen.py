"""What nvcc makes of the CUDA kernels, read in their PTX without a GPU.

The forms must sum a row's squares alike to agree bit for bit (test_forms.py
checks that on a GPU). nvcc contracts `sum += t * t` into an FMA only where the
product and the add fall in one basic block, and on an H200 the sandwich's last,
part-filled chunk once squared with a multiply and an add where the plain form
used FMAs. The kernels now ask for the FMA; this keeps it so, here, where no GPU
runs.
"""

from pathlib import Path

import pytest
from applied import applied_worktree
from ptx import SOURCE, compile_ptx, forward_kernels, nvcc, squares_outside_fma

pytestmark = pytest.mark.skipif(nvcc() is None, reason="nvcc, the CUDA compiler, is not on PATH")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with applied_worktree(tmp_path_factory.mktemp("cuda")) as tree:
        yield tree


def split_squares(tree: Path, source: Path, out: Path) -> tuple[int, list[str]]:
    forward = forward_kernels(compile_ptx(tree, source, out))
    return len(forward), [name for name, body in forward.items() if squares_outside_fma(body)]


def test_the_forward_kernels_square_only_in_fmas(tree: Path, tmp_path: Path) -> None:
    n_kernels, split = split_squares(tree, tree / SOURCE, tmp_path / "kernels.ptx")
    assert n_kernels > 500, "the forward kernels were not found in the PTX"
    assert split == []


def test_a_square_rounded_apart_is_caught(tree: Path, tmp_path: Path) -> None:
    text = (tree / SOURCE).read_text()
    mutated = text.replace("sum = __fmaf_rn(t, t, sum);", "sum = __fadd_rn(sum, __fmul_rn(t, t));")
    assert mutated != text
    # Beside the original, for its relative includes.
    source = tree / SOURCE.replace(".cu", "_mutated.cu")
    source.write_text(mutated)
    _, split = split_squares(tree, source, tmp_path / "mutated.ptx")
    assert split, "the check missed squares outside FMAs"
