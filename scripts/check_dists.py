"""Check what the wheel and the sdist that scripts/smoke built hold, file by file.

    python scripts/check_dists.py DIST_DIR SOURCE_LIST

SOURCE_LIST names the files of the work tree they were built from, one a line. The wheel must
hold the django_pgqrs package, whole, and its metadata with the license; the sdist the package,
docs/, the tests with the demo project they import, and the top-level files MANIFEST.in names;
neither anything else. Exit status 1, saying what differs, otherwise.
"""

from __future__ import annotations

import sys
import tarfile
import tomllib
import zipfile
from email.message import Message
from email.parser import HeaderParser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOP_LEVEL = {"CHANGELOG.md", "LICENSE", "MANIFEST.in", "README.md", "pyproject.toml"}
SDIST_DIRS = {"django_pgqrs", "docs", "tests", "testproject"}

problems: list[str] = []


def compare(what: str, found: set[str], expected: set[str]) -> None:
    if missing := sorted(expected - found):
        problems.append(f"{what} lacks {missing}")
    if extra := sorted(found - expected):
        problems.append(f"{what} holds files it should not: {extra}")


def check_metadata(what: str, text: str) -> None:
    meta: Message = HeaderParser().parsestr(text)
    version = tuple(int(part) for part in meta["Metadata-Version"].split("."))
    if version < (2, 4):
        problems.append(f"{what}: Metadata-Version {meta['Metadata-Version']} predates PEP 639")
    if meta["License-Expression"] != "MIT":
        problems.append(f"{what}: License-Expression is {meta['License-Expression']!r}")
    if meta.get_all("License-File") != ["LICENSE"]:
        problems.append(f"{what}: License-File is {meta.get_all('License-File')}")
    if any(c.startswith("License ::") for c in meta.get_all("Classifier") or ()):
        problems.append(f"{what}: a License classifier besides License-Expression")
    if meta["Description-Content-Type"] != "text/markdown":
        problems.append(f"{what}: the README is not declared as Markdown")


def main(dist_dir: str, source_list: str) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dist_name = project["name"].replace("-", "_")
    stem = f"{dist_name}-{project['version']}"
    source = set(Path(source_list).read_text().splitlines())
    package = {name for name in source if name.startswith("django_pgqrs/")}
    dist = Path(dist_dir)
    found = sorted(path.name for path in dist.iterdir())
    if found != [f"{stem}-py3-none-any.whl", f"{stem}.tar.gz"]:
        sys.exit(
            f"check_dists: expected one wheel and one sdist of {stem} in {dist}, found {found}"
        )

    with zipfile.ZipFile(dist / f"{stem}-py3-none-any.whl") as wheel:
        names = {name for name in wheel.namelist() if not name.endswith("/")}
        info = f"{stem}.dist-info/"
        compare("the wheel's package", {n for n in names if not n.startswith(info)}, package)
        if f"{info}licenses/LICENSE" not in names:
            problems.append(f"the wheel lacks {info}licenses/LICENSE")
        check_metadata("the wheel's METADATA", wheel.read(f"{info}METADATA").decode())

    with tarfile.open(dist / f"{stem}.tar.gz") as sdist:
        names = {m.name.removeprefix(f"{stem}/") for m in sdist.getmembers() if m.isfile()}
        # What setuptools writes besides the files it was given.
        egg_info = {n for n in names if n.startswith(f"{dist_name}.egg-info/")}
        built = {"PKG-INFO", "setup.cfg"} | egg_info
        shipped = {n for n in source if n.split("/")[0] in SDIST_DIRS}
        compare("the sdist (see MANIFEST.in)", names - built, shipped | TOP_LEVEL)
        member = sdist.extractfile(f"{stem}/PKG-INFO")
        assert member is not None
        check_metadata("the sdist's PKG-INFO", member.read().decode())

    if problems:
        sys.exit("check_dists: FAILED:\n  " + "\n  ".join(problems))
    print(
        f"check_dists: the wheel holds django_pgqrs ({len(package)} files) and its metadata; "
        f"the sdist holds it with {', '.join(sorted(SDIST_DIRS - {'django_pgqrs'}))} and "
        f"{', '.join(sorted(TOP_LEVEL))}"
    )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
