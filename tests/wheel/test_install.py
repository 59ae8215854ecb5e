"""Installing the wheel over stock MLX leaves only our wheel owning mlx/."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlxrtools.environment.venv import install_wheel, mlx_file_owners


def our_wheel() -> Path:
    wheel = os.environ.get("MLXR_WHEEL")
    if not wheel or not Path(wheel).is_file():
        pytest.fail("MLXR_WHEEL is not set: run the tests with `python3 scripts/mlxr.py test`")
    return Path(wheel)


@pytest.mark.vendor
def test_install_over_stock_mlx(tmp_path: Path) -> None:
    wheel = our_wheel()
    stock_version = wheel.name.split("-")[1].split("+")[0]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # The real packages from PyPI: the frontend and the backend that shares mlx/.
    backend = "mlx-metal" if sys.platform == "darwin" else "mlx-cpu"
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            f"mlx=={stock_version}",
            f"mlx-cpu=={stock_version}",
        ],
        check=True,
    )
    before = mlx_file_owners(python)
    assert {"mlx", backend} <= {name.lower().replace("_", "-") for name in before}

    install_wheel(python, wheel)

    after = mlx_file_owners(python)
    assert list(after) == ["mlx"]
    assert "+mlxr" in str(after["mlx"]["version"])
    out = subprocess.run(
        [
            str(python),
            "-c",
            "import mlx.core as mx; y, h = mx.fast.rmsnorm_fused(mx.ones((2, 8)), None, "
            "residual=mx.ones((2, 8))); print(mx.__version__, h.sum().item())",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == [after["mlx"]["version"], "32.0"]
