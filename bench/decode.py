"""How long does an image-folder study take to start, the first time and the next? Printed, not asserted.

    python bench/decode.py                                   # the 50,000 CIFAR-10 training JPEGs of ../shared/data
    python bench/decode.py --archive ARCHIVE.tar --limit 5000

The archive is extracted into a temporary folder, then ``load_data`` reads it twice with the same run
directory: the first start decodes every JPEG and keeps the arrays, the second reads them back.
"""

from __future__ import annotations

import argparse
import tarfile
import tempfile
import time
from pathlib import Path

from kdnas.config import DataConfig
from kdnas.data import load_data

SHARED_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-train.tar"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, default=SHARED_TRAIN, help="a tar of class folders (train/<class>/)")
    parser.add_argument("--limit", type=int, help="extract only the first N images")
    args = parser.parse_args()
    if not args.archive.is_file():
        raise SystemExit(f"error: {args.archive} does not exist; pass --archive")

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        with tarfile.open(args.archive) as tar:
            members = [m for m in tar.getmembers() if m.isfile()][: args.limit]
            tar.extractall(root / "images", members=members, filter="data")
        cfg = DataConfig(dataset="imagefolder", path=str(root / "images"))
        times = []
        for _ in range(2):
            start = time.perf_counter()
            data = load_data(cfg, root, cache_dir=root / "run")
            times.append(time.perf_counter() - start)
        images = len(data.train) + len(data.val) + len(data.test)
        print(
            f"{images:,} images: first start {times[0]:.1f} s (decoding), second start {times[1]:.1f} s (arrays read)"
        )


if __name__ == "__main__":
    main()
