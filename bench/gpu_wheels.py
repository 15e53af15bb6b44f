"""The wheels a GPU machine without network needs for `GPU_PYTHON=python3 make gpu-check`.

    .venv/bin/python bench/gpu_wheels.py [--dest .gpu-wheels] [--python-version 3.12]

The device machines of our workplace (KINDS.md of the device tool) run Python 3.12 with their own
torch, torchvision, numpy, pandas, pyarrow, PyYAML, prometheus-client, ... but not Ray, pydantic or
the few packages those need, and reach no package registry. This downloads exactly those, as
binary wheels for that Python on x86-64 Linux, at the versions this repository's .venv holds (what
the tests pass with), and rewrites Ray's wheel without its Java jars (32 MB of the 79: trials run
Python only), so that the wheels and the working tree fit in what one device run carries (64 MiB).
`make gpu-check` installs them with pip into a folder of their own (--no-index --no-deps --target)
that goes on PYTHONPATH with the repository.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
import zipfile
from pathlib import Path

# Not in the device image (KINDS.md's package list, read 2026-11-17); everything else the GPU check
# imports is (torch, torchvision, numpy, pandas, pyarrow, fsspec, PyYAML, requests, click, filelock,
# msgpack, protobuf, packaging, prometheus-client, rich, matplotlib, jinja2, scikit-learn, pytest, ...).
MISSING = ["ray", "pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions",
           "jsonschema", "jsonschema-specifications", "referencing", "rpds-py", "tensorboardX"]
DROP = ("ray/jars/",)  # Java workers only
DROP_SUFFIXES = (".js.map",)  # the dashboard's source maps (no dashboard in a sweep's Ray)
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]
LIMIT = 56 * 2**20  # bytes of wheels: the rest of the 64 MiB a run carries is the working tree


def slim(wheel: Path) -> None:
    """Rewrite ``wheel`` in place without DROP/DROP_SUFFIXES files (and their RECORD lines)."""
    dropped = lambda name: name.startswith(DROP) or name.endswith(DROP_SUFFIXES)  # noqa: E731
    slimmed = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(slimmed, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as out:
        for info in source.infolist():
            if dropped(info.filename):
                continue
            data = source.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                data = b"".join(line for line in data.splitlines(keepends=True)
                                if not dropped(line.split(b",", 1)[0].decode()))
            out.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    slimmed.replace(wheel)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=Path(".gpu-wheels"))
    parser.add_argument("--python-version", default="3.12")
    args = parser.parse_args()
    args.dest.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in MISSING]
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", args.python_version, "--implementation", "cp", *platforms,
                    "-d", str(args.dest), *pins], check=True)
    names = {name.lower().replace("-", "_") for name in MISSING}
    for wheel in sorted(args.dest.glob("*.whl")):
        if wheel.name.split("-")[0].lower() not in names:
            wheel.unlink()  # a wheel of an earlier list: one version of each, only these
        elif wheel.name.startswith("ray-"):
            slim(wheel)
    wheels = sorted(args.dest.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels)
    for wheel in wheels:
        print(f"{wheel.stat().st_size / 2**20:7.1f} MiB  {wheel.name}")
    print(f"{total / 2**20:7.1f} MiB in {len(wheels)} wheels in {args.dest} (limit {LIMIT / 2**20:.0f} MiB)")
    if total > LIMIT:
        print("too large to carry with the working tree: drop more of Ray (DROP in bench/gpu_wheels.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
