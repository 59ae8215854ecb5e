"""The build keeps libmlx on the shared libstdc++ (a static copy crashed on the CUDA machine)."""

import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from mlxrtools.environment.wheel_checks import check_shared_libstdcxx
from mlxrtools.errors import UserError

SOURCE = """#include <sstream>
std::string f(double d) { std::ostringstream o; o << d; return o.str(); }
"""


def wheel_with_libmlx(tmp_path: Path, *flags: str) -> Path:
    tmp_path.mkdir()
    src = tmp_path / "f.cpp"
    src.write_text(SOURCE)
    lib = tmp_path / "libmlx.so"
    subprocess.run(["g++", "-shared", "-fPIC", *flags, str(src), "-o", str(lib)], check=True)
    wheel = tmp_path / "mlx-0.0.0-cp3-none-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as whl:
        whl.write(lib, "mlx/lib/libmlx.so")
    return wheel


@pytest.mark.skipif(not (shutil.which("g++") and shutil.which("readelf")), reason="needs g++")
def test_a_static_libstdcxx_in_libmlx_fails_the_build(tmp_path: Path) -> None:
    check_shared_libstdcxx(wheel_with_libmlx(tmp_path / "shared"))
    with pytest.raises(UserError, match="links libstdc\\+\\+ statically"):
        check_shared_libstdcxx(wheel_with_libmlx(tmp_path / "static", "-static-libstdc++"))
